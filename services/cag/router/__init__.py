"""The router service: authenticates, checks ACLs, decides the route (metadata, rules, classifier, fallback)
and streams the answer from the cache pool."""
