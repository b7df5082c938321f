"""Replica choice: exact orders on constructed states (prefix against load, the load cap, the hash ring's
stability, health)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cag.events.replicas import ResidentTier
from cag.router.core.replicas import (
    HashRing,
    ReplicaBasis,
    ReplicaPolicy,
    ReplicaView,
    load_cap,
    rank_replicas,
    resident_prefix,
)

E, R, D = ResidentTier.ENGINE, ResidentTier.HOST_RAM, ResidentTier.LOCAL_DISK
POLICY = ReplicaPolicy()
NOW = 100.0
CHAIN = ("system", "tools", "billing")


def replica(
    replica_id: str, *, load: int = 0, capacity: int = 4, heard_at: float = NOW, **tiers: ResidentTier
) -> ReplicaView:
    return ReplicaView(
        replica_id=replica_id, address=f"{replica_id}:1", tiers=tiers, load=load, capacity=capacity, heard_at=heard_at
    )


def order(*replicas: ReplicaView, chain: tuple[str, ...] = CHAIN, now: float = NOW) -> tuple[str, ...]:
    return rank_replicas(chain, replicas, now, POLICY).replica_ids


def test_resident_prefix_stops_at_the_first_gap() -> None:
    assert resident_prefix(CHAIN, {"system": E, "billing": E}) == [E]
    assert resident_prefix(CHAIN, {"system": D, "tools": R, "billing": E}) == [D, R, E]
    assert resident_prefix(CHAIN, {"tools": E, "billing": E}) == []


def test_the_longest_resident_prefix_wins() -> None:
    a = replica("a", system=E)
    b = replica("b", system=E, tools=E, billing=E)
    c = replica("c", system=E, tools=E)
    result = rank_replicas(CHAIN, [a, b, c], NOW, POLICY)
    assert result.replica_ids[:3] == ("b", "c", "a")
    assert result.basis is ReplicaBasis.PREFIX
    assert result.resident_prefix == 3


def test_a_faster_tier_beats_a_slower_one() -> None:
    disk = replica("a", system=D, tools=D, billing=D)
    engine = replica("b", system=E, tools=E, billing=E)
    assert order(disk, engine) == ("b", "a")


def test_prefix_beats_load_within_the_cap() -> None:
    # cap = ceil(1.25 x (2 + 0 + 1) / 2) = 2: the holder at load 1 is under it and wins over an idle replica.
    holder = replica("a", load=1, system=E, tools=E, billing=E)
    idle = replica("b")
    assert order(holder, idle) == ("a", "b")


def test_load_decides_between_equal_prefixes() -> None:
    busy = replica("a", load=1, system=E, tools=E)
    quiet = replica("b", load=0, system=E, tools=E)
    # loads 1, 0, 1: cap = ceil(1.25 x 3 / 3) = 2, every replica under it; c holds only the root everyone holds.
    assert order(busy, quiet, replica("c", load=1, system=E)) == ("b", "a", "c")


def test_a_prefix_every_replica_holds_leaves_the_choice_to_the_ring() -> None:
    replicas = [replica(f"r{i}", system=E) for i in range(3)]  # the shared root is everywhere
    result = rank_replicas(CHAIN, replicas, NOW, POLICY)
    assert result.basis is ReplicaBasis.HASH
    assert result.replica_ids == tuple(HashRing.of(("r0", "r1", "r2"), POLICY.virtual_nodes).walk("billing"))


def test_a_replica_at_the_load_cap_is_walked_past() -> None:
    # loads 6, 0, 0: cap = ceil(1.25 x 7 / 3) = 3; the holder is full and comes last despite holding everything.
    holder = replica("a", load=6, system=E, tools=E, billing=E)
    others = [replica("b"), replica("c")]
    assert load_cap([6, 0, 0], 1.25) == 3
    result = rank_replicas(CHAIN, [holder, *others], NOW, POLICY)
    assert result.replica_ids[-1] == "a"
    assert result.basis is ReplicaBasis.HASH
    assert set(result.replica_ids[:2]) == {"b", "c"}


def test_a_replica_above_the_cap_with_a_free_slot_still_takes_its_chain() -> None:
    # loads 2, 0, 0: cap = ceil(1.25 x 3 / 3) = 2, but the holder runs 2 of its 4 slots: the request starts at once.
    holder = replica("a", load=2, capacity=4, system=E, tools=E, billing=E)
    assert order(holder, replica("b"), replica("c"))[0] == "a"
    full_holder = replica("a", load=2, capacity=2, system=E, tools=E, billing=E)
    assert order(full_holder, replica("b"), replica("c"))[-1] == "a"


def test_some_replica_is_always_under_the_load_cap() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        loads = [rng.randrange(50) for _ in range(rng.randrange(1, 6))]
        assert min(loads) < load_cap(loads, rng.choice([1.01, 1.25, 2.0]))


def test_nothing_resident_goes_to_the_chains_place_on_the_ring() -> None:
    replicas = [replica(f"r{i}") for i in range(3)]
    result = rank_replicas(CHAIN, replicas, NOW, POLICY)
    assert result.basis is ReplicaBasis.HASH
    assert result.resident_prefix == 0
    assert result.replica_ids == tuple(HashRing.of(("r0", "r1", "r2"), POLICY.virtual_nodes).walk("billing"))


def test_the_same_chain_goes_to_the_same_replica_across_calls_and_routers() -> None:
    replicas = [replica(f"r{i}") for i in range(3)]
    first = order(*replicas)
    assert order(*reversed(replicas)) == first  # another router, another listing order
    HashRing.of.cache_clear()  # another router process: nothing cached
    assert order(*replicas) == first


def test_leaf_modules_spread_over_the_replicas() -> None:
    replicas = [replica(f"r{i}") for i in range(3)]
    owners = Counter(order(*replicas, chain=("system", f"leaf{i}"))[0] for i in range(300))
    assert set(owners) == {"r0", "r1", "r2"}
    assert min(owners.values()) > 60  # roughly even: 100 each expected


def test_a_removed_replica_moves_only_its_own_keys() -> None:
    four = [replica(f"r{i}") for i in range(4)]
    chains = [("system", f"leaf{i}") for i in range(200)]
    before = {c: order(*four, chain=c)[0] for c in chains}
    after = {c: order(*four[:3], chain=c)[0] for c in chains}
    moved = {c for c in chains if before[c] != after[c]}
    assert moved == {c for c in chains if before[c] == "r3"}
    assert moved  # r3 owned some keys


def test_a_stale_announcement_is_not_chosen() -> None:
    stale = replica("a", heard_at=NOW - POLICY.stale_after_s - 0.1, system=E, tools=E, billing=E)
    fresh = replica("b")
    assert order(stale, fresh) == ("b",)


def test_a_failed_replica_is_not_chosen() -> None:
    failed = ReplicaView(replica_id="a", address="a:1", tiers={"system": E}, heard_at=NOW, failed=True)
    assert order(failed, replica("b")) == ("b",)


def test_no_healthy_replica_gives_an_empty_order() -> None:
    result = rank_replicas(CHAIN, [replica("a", heard_at=0.0)], NOW, POLICY)
    assert result.replica_ids == ()
    assert result.basis is ReplicaBasis.NONE


def test_the_policy_refuses_a_load_factor_of_one() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        ReplicaPolicy(load_factor=1.0)
