"""Prometheus metrics of a service, in a registry of the process's own, served over HTTP when asked."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

# Time to first token, as each service measures it (from the request's arrival).
TTFT = Histogram(
    "cag_ttft_seconds",
    "Time from a request's arrival to its first token",
    ["service", "path"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
TIER_HITS = Counter("cag_tier_hits_total", "Modules found resident in a tier when a request needed them", ["tier"],
                    registry=REGISTRY)  # fmt: skip
TIER_MISSES = Counter("cag_tier_misses_total", "Modules a request needed that a tier did not hold", ["tier"],
                      registry=REGISTRY)  # fmt: skip
QUEUE_DEPTH = Gauge("cag_queue_depth", "Requests waiting for an engine slot", registry=REGISTRY)
EVICTIONS = Counter("cag_evictions_total", "Modules dropped from a tier to make room", ["tier"], registry=REGISTRY)
INVALIDATIONS = Counter("cag_invalidations_total", "Modules dropped because the registry withdrew them",
                        registry=REGISTRY)  # fmt: skip
ROUTE_DECISIONS = Counter("cag_route_decisions_total", "Routing decisions", ["path", "basis"], registry=REGISTRY)
REQUESTS = Counter("cag_requests_total", "RPCs answered", ["service", "method", "code"], registry=REGISTRY)


def serve_metrics(host: str, port: int) -> int:
    """Serve REGISTRY on http://host:port/metrics (port 0: any free one); returns the bound port."""
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_address[1])
