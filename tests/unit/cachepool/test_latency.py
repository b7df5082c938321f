"""The recent-TTFT window behind Stats: nearest-rank percentiles of the samples of the last `window_s` seconds,
at most `max_samples` of them; and Stats carries them (and the replica's id) as the proto says."""

from __future__ import annotations

import pytest

from cag.cachepool.convert import stats_of
from cag.cachepool.core.latency import LatencySummary, LatencyWindow
from cag.errors import InvalidFieldError
from cag.v1 import common_pb2
from tests.unit.cachepool.test_residency import minutes, pool


def test_an_empty_window_reports_no_samples_and_zero_percentiles() -> None:
    assert LatencyWindow().summary(now=10.0) == LatencySummary(samples=0, p50_s=0.0, p99_s=0.0)


def test_percentiles_are_nearest_rank_over_the_window() -> None:
    window = LatencyWindow(window_s=60.0)
    for i, seconds in enumerate([0.5, 0.1, 0.3, 0.2, 0.4]):  # recorded out of order of size
        window.record(seconds, now=float(i))
    assert window.summary(now=5.0) == LatencySummary(samples=5, p50_s=0.3, p99_s=0.5)
    for i in range(95):  # 100 samples: p50 is the 50th smallest, p99 the 99th
        window.record(1.0 + i, now=5.0)
    summary = window.summary(now=5.0)
    assert (summary.samples, summary.p50_s, summary.p99_s) == (100, 45.0, 94.0)


def test_samples_older_than_the_window_are_forgotten() -> None:
    window = LatencyWindow(window_s=10.0)
    window.record(9.0, now=0.0)
    window.record(1.0, now=5.0)
    assert window.summary(now=9.9) == LatencySummary(samples=2, p50_s=1.0, p99_s=9.0)
    assert window.summary(now=10.0) == LatencySummary(samples=1, p50_s=1.0, p99_s=1.0)  # the first is 10 s old
    assert window.summary(now=15.0).samples == 0


def test_at_most_max_samples_are_kept_the_oldest_going_first() -> None:
    window = LatencyWindow(window_s=60.0, max_samples=3)
    for seconds in (9.0, 1.0, 2.0, 3.0):
        window.record(seconds, now=1.0)
    assert window.summary(now=1.0) == LatencySummary(samples=3, p50_s=2.0, p99_s=3.0)


@pytest.mark.parametrize("seconds", [-0.1, float("nan"), float("inf")])
def test_a_sample_that_is_no_duration_is_refused(seconds: float) -> None:
    with pytest.raises(InvalidFieldError):
        LatencyWindow().record(seconds, now=0.0)


def test_a_window_without_room_is_refused() -> None:
    with pytest.raises(InvalidFieldError):
        LatencyWindow(window_s=0.0)
    with pytest.raises(InvalidFieldError):
        LatencyWindow(max_samples=0)


def test_stats_carry_the_ttft_percentiles_in_milliseconds_and_the_replica_id() -> None:
    stats = stats_of(
        pool(engine_gib=1).stats(minutes(0)),
        origin_hits=2,
        origin_reload_ms_per_gib=100.0,
        queued=1,
        running=3,
        invalidations=4,
        ttft=LatencySummary(samples=7, p50_s=0.012, p99_s=0.25),
        ttft_window_s=300.0,
        replica_id="pool-b",
    )
    assert (stats.ttft_p50_ms, stats.ttft_p99_ms, stats.ttft_samples, stats.ttft_window_s) == (12.0, 250.0, 7, 300.0)
    assert (stats.replica_id, stats.queued, stats.running, stats.invalidations) == ("pool-b", 1, 3, 4)
    origin = next(t for t in stats.tiers if t.tier == common_pb2.TIER_ORIGIN)
    assert origin.hits == 2
