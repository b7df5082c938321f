"""The Python SDK for product services: ask the platform over gRPC (sync and asyncio), typed errors."""
