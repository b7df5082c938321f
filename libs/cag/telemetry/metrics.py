"""Prometheus metrics of a service, in a registry of the process's own, served over HTTP when asked.

Counters a service already keeps (the cache pool's hits, misses and evictions per tier) are not counted twice:
the service registers a collector that reads them at scrape time (see cag.cachepool.metrics).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from cag.settings import ServiceSettings

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

# Time to first token, as each service measures it (from the request's arrival there).
TTFT = Histogram(
    "cag_ttft_seconds",
    "Time from a request's arrival to its first token",
    ["service", "path"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
ROUTE_DECISIONS = Counter("cag_route_decisions", "Routing decisions of served requests", ["path", "basis"],
                          registry=REGISTRY)  # fmt: skip
# Every RPC a server answered (cag.telemetry.requests counts them): service and method from the gRPC path, code
# the status name the caller received.
REQUESTS = Counter("cag_requests", "RPCs answered", ["service", "method", "code"], registry=REGISTRY)


def serve_metrics(host: str, port: int) -> int:
    """Serve REGISTRY on http://host:port/metrics (port 0: any free one); returns the bound port."""
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_address[1])


def serve_service_metrics(settings: ServiceSettings) -> None:
    """A service's endpoint where its settings ask for one (metrics_port; 0: none), said in the log."""
    if settings.metrics_port:
        port = serve_metrics(settings.metrics_host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
