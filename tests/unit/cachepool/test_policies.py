"""Eviction policies on hand-built candidates: exact order for the cost-aware keep value, LRU and LFU, a workload
where all three disagree, fixed per-load costs, and the cost-aware admission test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cag.cachepool.core import POLICIES, Candidate, CostAwarePolicy, LFUPolicy, LRUPolicy, policy_named
from cag.cachepool.core.policies import GIB
from cag.errors import InvalidFieldError

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def candidate(
    module_id: str,
    gib: float,
    *,
    hits: int = 0,
    priority: int = 1,
    used_min: int = 0,
    reload: float = 1000.0,
    fixed_ms: float = 0.0,
    served_ms: float = 0.0,
) -> Candidate:
    """`reload` ms per GiB plus `fixed_ms` per load to come back; `served_ms` to load from where it is now."""
    return Candidate(
        module_id=module_id,
        bytes=int(gib * GIB),
        hits_last_15m=hits,
        route_priority=priority,
        last_used_at=T0 + timedelta(minutes=used_min),
        reload_ms=fixed_ms + gib * reload,
        served_ms=served_ms,
    )


# keep value = max(1, hits * priority) * (size_gib * 1000 - 0) / size_gib
WORKLOAD = [
    candidate("a", 1, hits=0, priority=1, used_min=4),  # 1000 * 1  = 1000
    candidate("b", 2, hits=10, priority=1, used_min=1),  # 1000 * 10 = 10000
    candidate("c", 1, hits=2, priority=3, used_min=3),  # 1000 * 6  = 6000
    candidate("d", 0.5, hits=0, priority=1, used_min=2),  # 1000 * 1 = 1000
]


def test_the_keep_value_and_its_parts() -> None:
    c = candidate("x", 2, hits=3, priority=2, fixed_ms=50.0, served_ms=250.0)
    # uses 3 * 2 = 6; each saves (50 + 2 * 1000) - 250 = 1800 ms; 6 * 1800 = 10800 ms over 2 GiB
    assert (c.size_gib, c.uses, c.saved_ms, c.keep_value) == (2.0, 6, 10_800.0, 5_400.0)
    assert candidate("y", 1, hits=0, priority=5).uses == 1  # max(1, 0 * 5): unused modules count once
    assert candidate("z", 1, served_ms=3000.0).saved_ms == 0.0  # slower here than from below: saves nothing


def test_cost_aware_orders_by_lowest_keep_value_first() -> None:
    order = CostAwarePolicy().eviction_order(WORKLOAD, T0)
    assert [c.module_id for c in order] == ["a", "d", "c", "b"]


def test_lru_orders_by_least_recently_used_first() -> None:
    order = LRUPolicy().eviction_order(WORKLOAD, T0)
    assert [c.module_id for c in order] == ["b", "d", "c", "a"]


def test_lfu_orders_by_fewest_hits_then_least_recent_first() -> None:
    order = LFUPolicy().eviction_order(WORKLOAD, T0)
    assert [c.module_id for c in order] == ["d", "a", "c", "b"]  # a and d both unused: d was used longer ago


def test_lfu_breaks_equal_hits_and_recency_by_module_id() -> None:
    twins = [candidate("n2", 1, hits=3, used_min=5), candidate("n1", 1, hits=3, used_min=5)]
    older = candidate("n9", 1, hits=3, used_min=1)
    assert [c.module_id for c in LFUPolicy().eviction_order([*twins, older], T0)] == ["n9", "n1", "n2"]


# Reload costs differ by where each module would come back from, so the keep value is no longer just use.
# keep value = max(1, hits * priority) * reload ms per GiB
MIXED = [
    candidate("p", 4, hits=5, used_min=1, reload=100.0),  # big, busy, cheap to reload: 100 * 5 = 500
    candidate("q", 0.25, hits=1, used_min=0, reload=10_000.0),  # small, quiet, only at the origin: 10000
    candidate("r", 1, hits=8, used_min=4, reload=1000.0),  # the busiest, used last: 8000
    candidate("s", 1, hits=2, used_min=2, reload=1000.0),  # 2000
]


def test_the_three_policies_order_the_same_modules_three_ways() -> None:
    orders = {name: [c.module_id for c in policy_named(name).eviction_order(MIXED, T0)] for name in POLICIES}
    assert orders == {
        "cost_aware": ["p", "s", "r", "q"],  # cheapest reload milliseconds per GiB kept first
        "lru": ["q", "p", "s", "r"],  # used at minutes 0, 1, 2, 4
        "lfu": ["q", "s", "p", "r"],  # 1, 2, 5, 8 hits
    }


def test_the_three_policies_free_one_gib_with_different_victims() -> None:
    victims = {name: policy_named(name).victims(MIXED, GIB, T0) for name in POLICIES}
    assert victims == {"cost_aware": ["p"], "lru": ["q", "p"], "lfu": ["q", "s"]}


def test_the_two_policies_choose_different_victims_for_the_same_need() -> None:
    need = int(1.2 * GIB)
    assert CostAwarePolicy().victims(WORKLOAD, need, T0) == ["a", "d"]  # 1 GiB, then 1.5 GiB >= 1.2
    assert LRUPolicy().victims(WORKLOAD, need, T0) == ["b"]  # 2 GiB at once


def test_victims_stop_as_soon_as_enough_is_freed() -> None:
    assert CostAwarePolicy().victims(WORKLOAD, 0, T0) == []
    assert CostAwarePolicy().victims(WORKLOAD, GIB, T0) == ["a"]
    assert CostAwarePolicy().victims(WORKLOAD, GIB + 1, T0) == ["a", "d"]
    assert CostAwarePolicy().victims(WORKLOAD, 10 * GIB, T0) == ["a", "d", "c", "b"]  # all there is


# Every load costs 100 ms more than its bytes: a small module saves more per GiB kept than a large one used as
# often, so size matters to cost_aware where LFU sees only hits and LRU only recency.
# keep value = max(1, hits) * (100 + gib * 1000) / gib
FIXED = [
    candidate("big", 4, hits=3, used_min=0, fixed_ms=100.0),  # 3 * 4100 / 4 = 3075
    candidate("small", 0.25, hits=3, used_min=1, fixed_ms=100.0),  # 3 * 350 / 0.25 = 4200
    candidate("mid", 1, hits=2, used_min=2, fixed_ms=100.0),  # 2 * 1100 / 1 = 2200
    candidate("hot", 2, hits=4, used_min=3, fixed_ms=100.0),  # 4 * 2100 / 2 = 4200
]


def test_a_fixed_cost_per_load_makes_small_modules_dearer_per_gib() -> None:
    orders = {name: [c.module_id for c in policy_named(name).eviction_order(FIXED, T0)] for name in POLICIES}
    assert orders == {
        "cost_aware": ["mid", "big", "hot", "small"],  # 2200, 3075, 4200 and 4200 (hot < small by id)
        "lru": ["big", "small", "mid", "hot"],  # used at minutes 0, 1, 2, 3
        "lfu": ["mid", "big", "small", "hot"],  # 2, 3 (used at 0), 3 (used at 1), 4 hits
    }
    victims = {name: policy_named(name).victims(FIXED, 5 * GIB, T0) for name in POLICIES}
    assert victims == {"cost_aware": ["mid", "big"], "lru": ["big", "small", "mid"], "lfu": ["mid", "big"]}


# A newcomer that saves less than its victims together is refused by cost_aware, admitted by the others.
VICTIMS = [candidate("v1", 1, hits=2), candidate("v2", 1, hits=1)]  # save 2000 + 1000 = 3000 ms


@pytest.mark.parametrize(
    ("hits", "admitted"),
    [
        (1, False),  # 1 * (2000 - 0) = 2000 < 3000
        (2, True),  # 4000 >= 3000
    ],
)
def test_cost_aware_admits_a_module_only_when_it_saves_what_it_evicts(hits: int, admitted: bool) -> None:
    newcomer = candidate("new", 2, hits=hits)
    assert CostAwarePolicy().admits(newcomer, VICTIMS) is admitted
    assert CostAwarePolicy().admits(newcomer, []) is True  # evicting nothing costs nothing
    assert LRUPolicy().admits(newcomer, VICTIMS) is LFUPolicy().admits(newcomer, VICTIMS) is True


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_ties_break_by_module_id(name: str) -> None:
    twins = [candidate(i, 1, hits=1, used_min=0) for i in ("m3", "m1", "m2")]
    assert policy_named(name).victims(twins, 2 * GIB, T0) == ["m1", "m2"]


def test_policies_register_by_name() -> None:
    assert {name: type(policy_named(name)) for name in POLICIES} == {
        "cost_aware": CostAwarePolicy,
        "lru": LRUPolicy,
        "lfu": LFUPolicy,
    }
    assert all(policy_named(name).name == name for name in POLICIES)
    with pytest.raises(InvalidFieldError, match="cost_aware, lfu, lru"):
        policy_named("fifo")
