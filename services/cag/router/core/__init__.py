"""The router's pure core: route decisions, ACL checks and the route snapshot; no transport, no torch."""
