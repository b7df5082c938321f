"""Eviction policies: which unpinned modules of a full tier leave first to make room for another.

A policy only ranks; the residency bookkeeping decides when to ask and applies the answer. Policies register by
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
    """An unpinned module resident in the tier being made room in, as a policy sees it."""

    module_id: str
    bytes: int
    # Requests served with the module in the 15 minutes before `now`.
    hits_last_15m: int
    # How much a route relies on the module, >= 1.
    route_priority: int
    last_used_at: datetime
    # Measured cost, per GiB, of bringing the module back from where it would be reloaded from, milliseconds.
    reload_ms_per_gib: float

    @property
    def size_gib(self) -> float:
        return self.bytes / GIB

    @property
    def reload_cost_ms(self) -> float:
        """What reloading the module would cost, milliseconds."""
        return self.size_gib * self.reload_ms_per_gib

    @property
    def keep_value(self) -> float:
        """Reload milliseconds saved per GiB kept: `reload_cost_ms * max(1, hits_last_15m * route_priority) /
        size_gib`. Low means cheap to bring back and rarely used, so it leaves first."""
        return self.reload_cost_ms * max(1, self.hits_last_15m * self.route_priority) / self.size_gib


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


class CostAwarePolicy(EvictionPolicy):
    """Lowest keep value first: the bytes whose loss costs the fewest reload milliseconds go first.

    The seed's score, `size_gb * reload_cost_ms / max(1, hits_last_15m * route_priority)`, has the right parts
    but the wrong direction for two of them: taken lowest-first it evicts the busiest modules, taken
    highest-first the dearest to reload. Its inverse per byte (GreedyDual-Size's rule) keeps both busy and
    costly modules: value = reload cost x use / size."""

    name = "cost_aware"

    def eviction_order(self, candidates: Sequence[Candidate], now: datetime) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.keep_value, c.module_id))


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
