"""The cache pool's Prometheus collector reads the pool's own counters at scrape time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest

from cag.cachepool.core import Tier
from cag.cachepool.metrics import PoolCollector
from tests.unit.cachepool.test_residency import minutes, pool, spec


def test_the_collector_exposes_hits_misses_evictions_queue_and_invalidations() -> None:
    residency = pool(engine_gib=2)
    for name in ("a", "b"):
        residency.admit(spec(name, 1), Tier.ENGINE, minutes(0))
    residency.hit("a", minutes(1))
    residency.admit(spec("c", 1), Tier.ENGINE, minutes(2))  # evicts one of a, b
    fake_pool = SimpleNamespace(residency=residency, now=lambda: minutes(3), invalidations=4)
    scheduler = SimpleNamespace(queued=2, running=1)
    registry = CollectorRegistry()
    registry.register(PoolCollector(cast("Any", fake_pool), cast("Any", scheduler)))
    text = generate_latest(registry).decode()
    engine = next(t for t in residency.stats(minutes(3)).tiers if t.tier is Tier.ENGINE)
    assert f'cag_tier_hits_total{{tier="engine"}} {float(engine.hits)}' in text
    assert f'cag_evictions_total{{tier="engine"}} {float(engine.evictions)}' in text and engine.evictions == 1
    assert "cag_invalidations_total 4.0" in text
    assert "cag_queue_depth 2.0" in text and "cag_running_requests 1.0" in text
