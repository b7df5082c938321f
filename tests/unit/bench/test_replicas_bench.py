"""The replicas benchmark's simulation on a small workload with injected costs (no files, no model): the JSON's
shape, numbers that agree with each other, cache-aware routing finding more in the engine than round robin, and a
run that repeats exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cag.bench.pool import TierCosts
from cag.bench.replicas import ROUTINGS, build_report, costs_of_report, default_spec, simulate

COSTS = TierCosts(
    query_prefill_s=0.01,
    reload_s_per_gib={"ENGINE": 0.0, "HOST_RAM": 0.1, "LOCAL_DISK": 1.0, "OBJECT_STORE": 5.0},
    load_fixed_s={"ENGINE": 0.0, "HOST_RAM": 0.001, "LOCAL_DISK": 0.005, "OBJECT_STORE": 0.02},
)
SPEC = replace(default_spec(requests=900, rate=2.0, skew=1.0, bytes_per_token=1 << 16), answer_s=0.2)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(build_report(SPEC, COSTS, SEEDS, lambda _: None).to_json())
    return result


def test_the_report_has_the_routing_block_the_issue_names(report: dict[str, Any]) -> None:
    assert set(report["routing"]) == set(ROUTINGS)
    for result in report["routing"].values():
        assert {"hit_ratio", "p50_ttft_s", "p90_ttft_s"} <= set(result)
        assert 0 <= result["hit_ratio"] <= 1
        assert COSTS.query_prefill_s <= result["p50_ttft_s"] <= result["p90_ttft_s"]
    assert report["reference"]["measured_here"] is False
    assert report["mode"].startswith("simulated")


def test_the_ratios_are_those_of_the_medians(report: dict[str, Any]) -> None:
    routing, ratios = report["routing"], report["ratios"]
    p90 = routing["round_robin"]["p90_ttft_s"] / routing["cache_aware"]["p90_ttft_s"]
    assert ratios["p90_ttft_round_robin_over_cache_aware"] == pytest.approx(p90)
    assert report["target"]["met"] == (p90 >= 1.5)


def test_every_counted_request_is_served_once(report: dict[str, Any]) -> None:
    counted = SPEC.workload.requests - SPEC.workload.warmup_requests
    for repetition in report["repetitions"]:
        for result in repetition["routing"].values():
            assert sum(result["requests_per_replica"]) == counted
            assert sum(result["served_from"].values()) == pytest.approx(1.0)
        assert repetition["routing"]["round_robin"]["requests_per_replica"] == [counted // 3] * 3


def test_cache_aware_routing_finds_more_in_the_engine(report: dict[str, Any]) -> None:
    assert report["routing"]["cache_aware"]["hit_ratio"] > report["routing"]["round_robin"]["hit_ratio"]


def test_a_run_repeats_exactly() -> None:
    assert simulate("cache_aware", SPEC, COSTS, seed=3) == simulate("cache_aware", SPEC, COSTS, seed=3)


def test_costs_are_taken_back_from_an_earlier_measured_report(report: dict[str, Any], tmp_path: Path) -> None:
    given = tmp_path / "given.json"
    given.write_text(json.dumps(report))
    with pytest.raises(ValueError, match="no measured costs"):
        costs_of_report(given)  # costs injected, not measured: nothing to take back
    measured = tmp_path / "replicas.json"
    measured.write_text(json.dumps({**report, "measurement": {"kv_bytes_per_token": 46080}}))
    costs, bytes_per_token, source = costs_of_report(measured)
    assert (costs, bytes_per_token) == (COSTS, 46080)
    assert report["created_at"] in source and "replicas.json" in source
