"""gRPC plumbing shared by every service: the error interceptor, server construction, timestamp conversion."""
