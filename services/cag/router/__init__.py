"""The router service: authenticates, checks ACLs, decides the route (metadata, rules, classifier, fallback), streams the answer from the cache pool."""
