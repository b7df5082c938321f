"""The pool benchmark's simulation on a tiny workload with injected costs (no files, no model): the JSON's shape,
numbers that agree with each other, and a run that repeats exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cag.bench.pool import (
    POLICY_NAMES,
    PathTimings,
    TierCosts,
    WorkloadSpec,
    build_report,
    fit_load_cost,
    percentile,
    zipf_requests,
)
from cag.bench.ttft import Timing
from cag.cachepool.core import Tier, TierBudgets
from cag.cachepool.core.policies import GIB

COSTS = TierCosts(
    query_prefill_s=0.01,
    reload_s_per_gib={"ENGINE": 0.0, "HOST_RAM": 0.1, "LOCAL_DISK": 1.0, "OBJECT_STORE": 5.0},
    load_fixed_s={"ENGINE": 0.0, "HOST_RAM": 0.001, "LOCAL_DISK": 0.005, "OBJECT_STORE": 0.02},
)
SPEC = WorkloadSpec(
    bytes_per_token=1 << 16, modules=10, min_tokens=64, max_tokens=1024, requests=500, warmup_requests=50, seed=7
)
SKEWS = (0.6, 1.2)
BUDGETS = TierBudgets(engine_bytes=GIB, host_ram_bytes=2 * GIB, local_disk_bytes=4 * GIB)
TIERS = {"ENGINE", "HOST_RAM", "LOCAL_DISK", "OBJECT_STORE"}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(build_report(SPEC, COSTS, SKEWS, lambda _: None).to_json())
    return result


def test_the_report_has_every_skew_and_policy(report: dict[str, Any]) -> None:
    assert [s["skew"] for s in report["skews"]] == list(SKEWS)
    for skew in report["skews"]:
        assert set(skew["policies"]) == set(POLICY_NAMES) == {"cost_aware", "lru", "lfu"}
        assert skew["lowest_mean_ttft"] in POLICY_NAMES
        for result in skew["policies"].values():
            assert set(result["hit_ratio"]) == TIERS
            assert {"mean_ttft_s", "p99_ttft_s"} <= set(result)
    assert report["parameters"]["workload"]["modules"] == 10
    assert report["parameters"]["skews"] == list(SKEWS)
    assert "modeled from measured restore costs" in report["ttft_model"]
    assert report["measurement"] is None  # injected costs, nothing measured


def test_the_numbers_agree_with_each_other(report: dict[str, Any]) -> None:
    budgets = report["parameters"]["budgets"]
    assert budgets["ENGINE"] < budgets["HOST_RAM"] < report["parameters"]["total_module_bytes"]
    for skew in report["skews"]:
        means = {name: r["mean_ttft_s"] for name, r in skew["policies"].items()}
        assert skew["lowest_mean_ttft"] == min(means, key=lambda n: (means[n], n))
        for r in skew["policies"].values():
            assert all(0 <= ratio <= 1 for ratio in r["hit_ratio"].values())
            assert sum(r["hit_ratio"].values()) == pytest.approx(1)
            assert r["hit_ratio"]["OBJECT_STORE"] > 0  # more modules than the tiers hold: some requests miss
            assert COSTS.query_prefill_s <= r["p50_ttft_s"] <= r["p99_ttft_s"]
            assert COSTS.query_prefill_s <= r["mean_ttft_s"] <= r["p99_ttft_s"]
    everywhere = all(s["lowest_mean_ttft"] == "cost_aware" for s in report["skews"])
    assert report["cost_aware_lowest_mean_ttft_everywhere"] is everywhere


def test_the_same_spec_gives_the_same_results(report: dict[str, Any]) -> None:
    again = json.loads(build_report(SPEC, COSTS, SKEWS, lambda _: None).to_json())
    assert again["skews"] == report["skews"]


def test_a_higher_skew_concentrates_requests_on_fewer_modules() -> None:
    def top_share(skew: float) -> float:
        picks = [m for _, m in zipf_requests(SPEC, skew)]
        return max(picks.count(m) for m in set(picks)) / len(picks)

    assert top_share(1.2) > top_share(0.6)
    times = [at for at, _ in zipf_requests(SPEC, 0.9)]
    assert times == sorted(times) and times[0] > 0


def test_ttft_is_prefill_plus_the_serving_tiers_fixed_cost_and_cost_per_gib() -> None:
    assert COSTS.ttft_s(Tier.ENGINE, GIB) == 0.01
    assert COSTS.ttft_s(Tier.LOCAL_DISK, GIB // 2) == pytest.approx(0.01 + 0.005 + 0.5)
    settings = COSTS.pool_settings(BUDGETS, "lfu")
    assert (settings.initial_reload_ms_per_gib[Tier.OBJECT_STORE], settings.load_fixed_ms[Tier.OBJECT_STORE]) == (
        5000.0,
        20.0,
    )
    with pytest.raises(ValueError, match="ENGINE at 0"):
        TierCosts(query_prefill_s=0.0, reload_s_per_gib={"HOST_RAM": 1.0}, load_fixed_s={})


def timings(file_bytes: int, ram_s: float, disk_s: float, origin_s: float) -> PathTimings:
    return PathTimings(
        tokens=1,
        file_bytes=file_bytes,
        ram_restore=Timing.of([ram_s]),
        disk_hit=Timing.of([disk_s]),
        origin_miss=Timing.of([origin_s]),
    )


def test_each_tier_is_fitted_a_fixed_cost_and_a_cost_per_gib_through_two_sizes() -> None:
    small = timings(GIB // 4, ram_s=0.25, disk_s=0.3, origin_s=0.05)
    large = timings(GIB, ram_s=1.0, disk_s=1.2, origin_s=0.02)
    assert fit_load_cost(small, large, Tier.HOST_RAM) == pytest.approx((0.0, 1.0))  # proportional: no fixed part
    assert fit_load_cost(small, large, Tier.LOCAL_DISK) == pytest.approx((0.0, 1.2))  # 0.3 + 0.9 per 0.75 GiB
    # A large load measured faster than a small one (noise): flat, the small load's time for every size.
    assert fit_load_cost(small, large, Tier.OBJECT_STORE) == pytest.approx((0.05, 0.0))
    with_fixed = timings(GIB, ram_s=1.1, disk_s=1.3, origin_s=1.0)
    assert fit_load_cost(timings(GIB // 2, 0.6, 0.7, 0.5), with_fixed, Tier.HOST_RAM) == pytest.approx((0.1, 1.0))
    # The line would cross below the origin (0.5 s at 1/2 GiB, 1.2 s at 1 GiB): proportional to size instead.
    assert fit_load_cost(timings(GIB // 2, 0.6, 0.5, 0.5), with_fixed, Tier.LOCAL_DISK) == pytest.approx((0.0, 1.3))


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([3.0], 99) == 3.0
