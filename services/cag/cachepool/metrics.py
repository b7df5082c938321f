"""The cache pool's Prometheus metrics: its own counters and gauges, read from the pool at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cag.cachepool.pool import CachePool
from cag.cachepool.scheduler import Scheduler


class PoolCollector(Collector):
    def __init__(self, pool: CachePool, scheduler: Scheduler) -> None:
        self.pool = pool
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self.pool.residency.stats(self.pool.now())
        hits = CounterMetricFamily(
            "cag_tier_hits", "Modules found in a tier when a request needed them", labels=["tier"]
        )
        misses = CounterMetricFamily("cag_tier_misses", "Modules a tier did not hold when needed", labels=["tier"])
        evictions = CounterMetricFamily("cag_evictions", "Modules dropped from a tier to make room", labels=["tier"])
        resident = GaugeMetricFamily("cag_resident_bytes", "Bytes of modules resident in a tier", labels=["tier"])
        for tier in stats.tiers:
            name = tier.tier.name.lower()
            hits.add_metric([name], tier.hits)
            misses.add_metric([name], tier.misses)
            evictions.add_metric([name], tier.evictions)
            resident.add_metric([name], tier.bytes)
        yield from (hits, misses, evictions, resident)
        yield CounterMetricFamily(
            "cag_invalidations", "Modules dropped because the registry withdrew them", value=self.pool.invalidations
        )
        yield GaugeMetricFamily("cag_queue_depth", "Requests waiting for an engine slot", value=self.scheduler.queued)
        yield GaugeMetricFamily("cag_running_requests", "Requests on the engine now", value=self.scheduler.running)
