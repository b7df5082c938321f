"""Eviction policies: which unpinned modules of a full tier leave first to make room for another.

A policy ranks, and may refuse a module the room it asks for; the residency bookkeeping decides when to ask and
applies the answer. Policies register by
name in POLICIES and the pool's settings pick one ("cost_aware" by default; "lru" and "lfu" as the alternatives).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cag.errors import InvalidFieldError

GIB = 1 << 30


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A module as a policy sees it: one resident in the tier being made room in (unpinned), or one asking in."""

    module_id: str
    bytes: int
    # Requests served with the module in the 15 minutes before `now`.
    hits_last_15m: int
    # How much a route relies on the module, >= 1.
    route_priority: int
    last_used_at: datetime
    # Measured time to bring the module into the engine from where it would be reloaded from once it leaves this
    # tier (the next slower tier holding it, else its origin), and from this tier: what a request pays after the
    # eviction and before it. Each is a per-load latency plus the module's GiB times the tier's ms per GiB.
    reload_ms: float
    served_ms: float

    @property
    def size_gib(self) -> float:
        return self.bytes / GIB

    @property
    def uses(self) -> int:
        """Requests expected in the next 15 minutes, weighted by the route: `max(1, hits_last_15m * route_priority)`
        (a module about to be used, or just admitted, counts once)."""
        return max(1, self.hits_last_15m * self.route_priority)

    @property
    def saved_ms(self) -> float:
        """TTFT milliseconds the tier's copy saves over the next 15 minutes: `uses * (reload_ms - served_ms)`."""
        return self.uses * max(0.0, self.reload_ms - self.served_ms)

    @property
    def keep_value(self) -> float:
        """TTFT milliseconds saved per GiB of the tier's budget: `saved_ms / size_gib`. Low leaves first."""
        return self.saved_ms / self.size_gib


class EvictionPolicy(ABC):
    """Ranks candidates for eviction; `victims` takes them in that order until enough bytes are freed."""

    name: str

    @abstractmethod
    def eviction_order(self, candidates: Sequence[Candidate], now: datetime) -> list[Candidate]:
        """The candidates, first to leave first. Ties must be broken deterministically (by module id)."""

    def victims(self, candidates: Sequence[Candidate], bytes_needed: int, now: datetime) -> list[str]:
        """Ids of the modules to evict, in eviction order, freeing at least `bytes_needed` bytes (all of the
        candidates if even they are not enough: the caller checks that before asking)."""
        chosen: list[str] = []
        freed = 0
        for candidate in self.eviction_order(candidates, now):
            if freed >= bytes_needed:
                break
            chosen.append(candidate.module_id)
            freed += candidate.bytes
        return chosen

    def admits(self, newcomer: Candidate, victims: Sequence[Candidate]) -> bool:
        """Whether a module may take a tier's room from `victims` (those it would evict). Admit all by default."""
        return True


class CostAwarePolicy(EvictionPolicy):
    """Fewest TTFT milliseconds saved per GiB first, and no admission that saves less than it evicts.

    A tier's copy of a module saves each of its requests the difference between loading it from where it would
    come back from and loading it from this tier, per-load latency included; over the next 15 minutes that is
    its uses (hits in the last 15, times the route's priority) times that difference, and per byte of budget
    that divided by its size (GreedyDual-Size's rule, with a cost that is not proportional to size). The seed's
    score, `size_gb * reload_cost_ms / max(1, hits_last_15m * route_priority)`, has these parts with two of them
    the wrong way round: taken lowest-first it evicts the busiest modules.

    Admission (TinyLFU's doorkeeper, by cost): a module asking into a full tier enters only when it saves at
    least what the modules it would evict save together; a module seen once does not push out busier ones."""

    name = "cost_aware"

    def eviction_order(self, candidates: Sequence[Candidate], now: datetime) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.keep_value, c.module_id))

    def admits(self, newcomer: Candidate, victims: Sequence[Candidate]) -> bool:
        return newcomer.saved_ms >= sum(v.saved_ms for v in victims)


class LRUPolicy(EvictionPolicy):
    """Least recently used first."""

    name = "lru"

    def eviction_order(self, candidates: Sequence[Candidate], now: datetime) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.last_used_at, c.module_id))


class LFUPolicy(EvictionPolicy):
    """Least frequently used first: fewest hits in the last 15 minutes, then least recently used, then module id.
    Counting only the window (not all time) lets a module that was busy once and is idle now leave."""

    name = "lfu"

    def eviction_order(self, candidates: Sequence[Candidate], now: datetime) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.hits_last_15m, c.last_used_at, c.module_id))


POLICIES: dict[str, type[EvictionPolicy]] = {"cost_aware": CostAwarePolicy, "lru": LRUPolicy, "lfu": LFUPolicy}


def policy_named(name: str) -> EvictionPolicy:
    """A fresh instance of the policy registered under `name`; InvalidFieldError names the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise InvalidFieldError("eviction_policy", f"{name!r} names no eviction policy (known: {known})") from None
