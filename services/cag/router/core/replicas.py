"""Which cache-pool replica serves a request: the one already holding the longest prefix of its chain, weighed
against its load; for a chain resident nowhere, consistent hashing with bounded loads.

Pure and deterministic: the same replicas (ids, residency, loads) and the same chain give the same order on every
router, so that routers spread over processes send a cold chain to the same replica and it is loaded once.

Scoring: walking the chain root first, each module the replica holds adds its tier's weight (the engine most, the
local disk least) until the first module it does not hold (a module after a gap is of no use: the engine restores
a chain from its root). A replica's load, (queued + running) / capacity, costs `load_weight` points per full
load. Only replicas holding more than every replica holds are ranked by score; the others follow in the ring's
order for the chain's leaf, so that a leaf resident nowhere goes to the same replica every time even when its
root is resident everywhere (without the ring, each cold leaf would land on whichever replica is least loaded,
and every replica would end up loading every leaf).

Bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018): no replica
takes a request while it holds ceil(c x mean load) requests or more, the mean counting this request, unless it has
an engine slot free (the request then starts at once: sending it elsewhere would only lose the cache); a replica
at that cap comes after every other, whatever it holds.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from cag.events.replicas import ResidentTier

DEFAULT_TIER_WEIGHTS: Mapping[ResidentTier, float] = {
    ResidentTier.ENGINE: 1.0,
    ResidentTier.HOST_RAM: 0.5,
    ResidentTier.LOCAL_DISK: 0.2,
}


@dataclass(frozen=True, kw_only=True)
class ReplicaView:
    """A replica as the router knows it: its last announcement, this router's own requests on it, its health."""

    replica_id: str
    address: str
    # module id → the fastest tier holding it
    tiers: Mapping[str, ResidentTier] = field(default_factory=dict)
    # Requests waiting and running on it (the larger of what it announced and what this router has in flight).
    load: int = 0
    # Requests it runs at once (>= 1).
    capacity: int = 1
    # When the router last heard from it, seconds on the router's monotonic clock.
    heard_at: float = 0.0
    # A call to it failed and it has not announced since.
    failed: bool = False

    def healthy(self, now: float, stale_after_s: float) -> bool:
        return not self.failed and now - self.heard_at <= stale_after_s


@dataclass(frozen=True, kw_only=True)
class ReplicaPolicy:
    # A replica not heard from for this long is not chosen (a few heartbeats: a dead replica stops announcing).
    stale_after_s: float = 6.0
    # c of bounded loads, > 1: how far above the mean load a replica may go before requests walk past it.
    load_factor: float = 1.25
    # Points a replica's score loses per full load ((queued + running) / capacity = 1).
    load_weight: float = 0.5
    # Points per module of the chain's resident prefix, by the tier holding it.
    tier_weights: Mapping[ResidentTier, float] = field(default_factory=lambda: dict(DEFAULT_TIER_WEIGHTS))
    # Points of the hash ring per replica: more spread the keys more evenly.
    virtual_nodes: int = 64

    def __post_init__(self) -> None:
        if self.load_factor <= 1 or self.stale_after_s <= 0 or self.virtual_nodes < 1 or self.load_weight < 0:
            raise ValueError(
                "ReplicaPolicy needs load_factor > 1, stale_after_s > 0, virtual_nodes >= 1, load_weight >= 0"
            )


class ReplicaBasis(StrEnum):
    """Why the first replica of an order is first."""

    PREFIX = "prefix"  # it holds the longest prefix of the chain, as weighed against its load
    HASH = "hash"  # no replica under the load cap holds any of the chain: the chain's place on the ring
    NONE = "none"  # no healthy replica


@dataclass(frozen=True, kw_only=True)
class ReplicaOrder:
    """The healthy replicas in the order to try them, and why the first is first."""

    replica_ids: tuple[str, ...]
    basis: ReplicaBasis
    # Modules of the chain, root first, the first replica holds.
    resident_prefix: int


def resident_prefix(chain: Sequence[str], tiers: Mapping[str, ResidentTier]) -> list[ResidentTier]:
    """The tiers holding the chain's modules, root first, up to the first module not held."""
    held = []
    for module_id in chain:
        tier = tiers.get(module_id)
        if tier is None:
            break
        held.append(tier)
    return held


def load_cap(loads: Sequence[int], load_factor: float) -> int:
    """The most requests a replica may hold and still take one more: ceil(c x (total + 1) / replicas)."""
    return math.ceil(load_factor * (sum(loads) + 1) / len(loads))


def rank_replicas(
    chain: Sequence[str], replicas: Sequence[ReplicaView], now: float, policy: ReplicaPolicy
) -> ReplicaOrder:
    """Every healthy replica, best first for `chain` (module ids, root first): those holding a prefix of it by
    score, then the rest in the chain's ring order, then those at the load cap, least loaded first."""
    healthy = sorted((r for r in replicas if r.healthy(now, policy.stale_after_s)), key=lambda r: r.replica_id)
    if not healthy or not chain:
        return ReplicaOrder(replica_ids=(), basis=ReplicaBasis.NONE, resident_prefix=0)
    cap = load_cap([r.load for r in healthy], policy.load_factor)

    def is_full(r: ReplicaView) -> bool:
        # Above the cap, and no engine slot free: a request that would start at once costs nothing to send there.
        return r.load >= max(cap, r.capacity)

    under = [r for r in healthy if not is_full(r)]
    full = sorted((r for r in healthy if is_full(r)), key=lambda r: (r.load / r.capacity, r.replica_id))

    held = {r.replica_id: sum(policy.tier_weights[t] for t in resident_prefix(chain, r.tiers)) for r in healthy}
    # What every replica holds (a shared root, typically) tells none apart: only more than that earns a place
    # ahead of the ring's order.
    common = min(held.values())

    def score(r: ReplicaView) -> float:
        return held[r.replica_id] - policy.load_weight * r.load / r.capacity

    holding = sorted((r for r in under if held[r.replica_id] > common), key=lambda r: (-score(r), r.replica_id))
    ring = HashRing.of(tuple(r.replica_id for r in healthy), policy.virtual_nodes)
    rest = {r.replica_id for r in under} - {r.replica_id for r in holding}
    by_ring = [replica_id for replica_id in ring.walk(chain[-1]) if replica_id in rest]
    order = (*(r.replica_id for r in holding), *by_ring, *(r.replica_id for r in full))
    # Some replica is always under the cap (the mean counts this request and c > 1), so `under` is never empty.
    basis = ReplicaBasis.PREFIX if holding else ReplicaBasis.HASH
    prefix = len(resident_prefix(chain, holding[0].tiers)) if holding else 0
    return ReplicaOrder(replica_ids=order, basis=basis, resident_prefix=prefix)


def _point(text: str) -> int:
    """A stable 64-bit point on the ring (every router process computes the same; Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class HashRing:
    """`virtual_nodes` points per replica on a 64-bit ring; a key belongs to the first replica clockwise of it."""

    points: tuple[int, ...]
    owners: tuple[str, ...]

    @staticmethod
    @lru_cache(maxsize=64)
    def of(replica_ids: tuple[str, ...], virtual_nodes: int) -> HashRing:
        placed = sorted(
            (_point(f"{replica_id}#{i}"), replica_id) for replica_id in replica_ids for i in range(virtual_nodes)
        )
        return HashRing(points=tuple(p for p, _ in placed), owners=tuple(o for _, o in placed))

    def walk(self, key: str) -> Iterator[str]:
        """Each replica once, clockwise from the key's point."""
        if not self.points:
            return
        start, seen = bisect.bisect(self.points, _point(key)), set[str]()
        for i in range(len(self.points)):
            owner = self.owners[(start + i) % len(self.points)]
            if owner not in seen:
                seen.add(owner)
                yield owner
