"""The router's Prometheus metrics, served on `metrics_port` when it is set."""

from __future__ import annotations

from prometheus_client import Counter

DECISIONS = Counter("cag_router_decisions", "Route decisions of served requests", ["path", "basis"])
