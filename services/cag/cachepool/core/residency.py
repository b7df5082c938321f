"""Module residency across the pool's tiers: byte budgets, pins, hits and measured reload costs.

Pure bookkeeping in the manner of vLLM's block pool: no I/O, no clock (every time is passed in as `now`), no
locks (the service serialises calls). The caller moves bytes and then tells this core what happened: `admit`
answers which modules to evict first (and `worth_admitting` whether a module is worth what it would evict),
`hit` which tier serves a lookup, `record_load` how long a load took. Hits of a module no tier holds are
remembered for the 15-minute window too: a module coming back counts the requests it missed.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from cag.cachepool.core.errors import ModuleNotResidentError, TierFullError
from cag.cachepool.core.policies import GIB, Candidate, policy_named
from cag.errors import InvalidFieldError

HIT_WINDOW = timedelta(minutes=15)


class Tier(StrEnum):
    """Residency tiers, fastest first (cachepool.proto's Tier without its UNSPECIFIED)."""

    ENGINE = "ENGINE"
    HOST_RAM = "HOST_RAM"
    LOCAL_DISK = "LOCAL_DISK"
    # The module's storage_uri: always holds it, has no budget, never evicts (modules are reloaded from it).
    OBJECT_STORE = "OBJECT_STORE"


# The tiers this pool holds modules in and budgets, fastest first.
CACHE_TIERS = (Tier.ENGINE, Tier.HOST_RAM, Tier.LOCAL_DISK)

# Reload cost per tier until the first load from it is measured, ms per GiB (guesses; measurements replace them).
DEFAULT_RELOAD_MS_PER_GIB = {
    Tier.ENGINE: 0.0,
    Tier.HOST_RAM: 250.0,
    Tier.LOCAL_DISK: 1_000.0,
    Tier.OBJECT_STORE: 10_000.0,
}
# What every load from a tier costs whatever its size, ms: opening and checking a file, an object store's
# first byte. Guesses (`cag bench pool` fits them for its machine); the per-GiB part is measured net of them.
DEFAULT_LOAD_FIXED_MS = {
    Tier.ENGINE: 0.0,
    Tier.HOST_RAM: 1.0,
    Tier.LOCAL_DISK: 5.0,
    Tier.OBJECT_STORE: 20.0,
}


@dataclass(frozen=True, kw_only=True)
class TierBudgets:
    """Bytes each cache tier may hold (all > 0)."""

    engine_bytes: int
    host_ram_bytes: int
    local_disk_bytes: int

    def __post_init__(self) -> None:
        for tier in CACHE_TIERS:
            if self.of(tier) <= 0:
                raise InvalidFieldError(f"budgets.{tier.lower()}_bytes", "must be a positive number of bytes")

    def of(self, tier: Tier) -> int:
        """The budget of a cache tier, bytes."""
        match tier:
            case Tier.ENGINE:
                return self.engine_bytes
            case Tier.HOST_RAM:
                return self.host_ram_bytes
            case Tier.LOCAL_DISK:
                return self.local_disk_bytes
        raise InvalidFieldError("tier", f"{tier} has no budget (only {[t.value for t in CACHE_TIERS]} do)")


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """What the residency bookkeeping is configured with."""

    budgets: TierBudgets
    # A name in policies.POLICIES.
    eviction_policy: str = "cost_aware"
    # Weight of each new load measurement in the reload cost's exponentially weighted average, in (0, 1].
    reload_ewma_alpha: float = 0.2
    # ms per GiB assumed for a tier until a load from it is measured.
    initial_reload_ms_per_gib: dict[Tier, float] = field(default_factory=lambda: dict(DEFAULT_RELOAD_MS_PER_GIB))
    # ms every load from a tier costs on top of its bytes.
    load_fixed_ms: dict[Tier, float] = field(default_factory=lambda: dict(DEFAULT_LOAD_FIXED_MS))

    def __post_init__(self) -> None:
        policy_named(self.eviction_policy)  # fails early on an unknown name
        if not 0 < self.reload_ewma_alpha <= 1:
            raise InvalidFieldError("reload_ewma_alpha", "must be in (0, 1]")
        for name, costs in (
            ("initial_reload_ms_per_gib", self.initial_reload_ms_per_gib),
            ("load_fixed_ms", self.load_fixed_ms),
        ):
            if set(costs) != set(Tier) or min(costs.values()) < 0:
                raise InvalidFieldError(name, "must give every tier a cost >= 0")


@dataclass(frozen=True, kw_only=True)
class ModuleSpec:
    """What the pool must know of a module to place it (from its registry record)."""

    module_id: str
    # Size of the module's KV, bytes (> 0).
    bytes: int
    token_count: int
    # How much routes rely on the module, >= 1: multiplies its keep value.
    route_priority: int = 1

    def __post_init__(self) -> None:
        if self.bytes <= 0:
            raise InvalidFieldError("bytes", "must be a positive number of bytes")
        if self.token_count < 0:
            raise InvalidFieldError("token_count", "must be >= 0")
        if self.route_priority < 1:
            raise InvalidFieldError("route_priority", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class Eviction:
    """A module `admit` removed from `tier` to make room; the caller frees its bytes there."""

    module_id: str
    tier: Tier
    bytes: int


@dataclass(frozen=True, kw_only=True)
class TierStats:
    """One tier's residency and counters (cachepool.proto's TierStats, plus evictions)."""

    tier: Tier
    modules: int
    bytes: int
    capacity_bytes: int
    # Lookups served from this tier.
    hits: int
    # Lookups that found the module only in a slower tier, or nowhere.
    misses: int
    # Modules removed to make room (drops on invalidation are not evictions).
    evictions: int
    # Measured mean time to load a module into the engine from this tier, per GiB, milliseconds.
    reload_ms_per_gib: float


@dataclass(frozen=True, kw_only=True)
class ResidentModule:
    """A module as the pool holds it (cachepool.proto's ResidentModule)."""

    module_id: str
    # Tiers holding the module, fastest first.
    tiers: tuple[Tier, ...]
    bytes: int
    token_count: int
    pinned: bool
    route_priority: int
    hits_last_15m: int
    last_used_at: datetime


@dataclass(frozen=True, kw_only=True)
class PoolStats:
    """Every cache tier, fastest first, and every resident module, by id."""

    tiers: tuple[TierStats, ...]
    modules: tuple[ResidentModule, ...]


@dataclass(kw_only=True)
class _Entry:
    spec: ModuleSpec
    last_used_at: datetime
    pinned: bool = False
    # Requests running on the module now: it is not evicted from under them (a drop on invalidation still is).
    holds: int = 0
    tiers: set[Tier] = field(default_factory=set)
    hit_times: deque[datetime] = field(default_factory=deque)

    def hits_last_15m(self, now: datetime) -> int:
        return _hits_within_window(self.hit_times, now)

    def record_hit(self, now: datetime) -> None:
        _record_hit(self.hit_times, now)
        self.last_used_at = max(self.last_used_at, now)


@dataclass(kw_only=True)
class _TierState:
    capacity: int
    used: int = 0
    modules: set[str] = field(default_factory=set)
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class Residency:
    """Which modules each cache tier holds, within its byte budget, and what to evict to admit another."""

    def __init__(self, settings: PoolSettings) -> None:
        self._settings = settings
        self._policy = policy_named(settings.eviction_policy)
        self._tiers = {tier: _TierState(capacity=settings.budgets.of(tier)) for tier in CACHE_TIERS}
        self._modules: dict[str, _Entry] = {}
        # Hit times of modules no tier holds, least recently hit first, kept while within the window.
        self._unplaced_hits: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._reload_ms_per_gib = dict(settings.initial_reload_ms_per_gib)
        self._measured: set[Tier] = set()

    # --- placement -------------------------------------------------------------------------------------------

    def admit(self, module: ModuleSpec, tier: Tier, now: datetime) -> list[Eviction]:
        """Records `module` as resident in `tier`, first evicting unpinned modules there by the policy until it
        fits. Returns the evictions, in order. Admission counts as a use (recency) but not as a hit. Raises
        TierFullError, evicting nothing, when the module is larger than the tier or pinned modules leave too
        little room."""
        state = self._tier(tier)
        entry = self._entry_for(module, now)
        if tier in entry.tiers:
            return []
        evictions = self._make_room(state, tier, module, now)
        entry.tiers.add(tier)
        entry.last_used_at = max(entry.last_used_at, now)
        state.modules.add(module.module_id)
        state.used += module.bytes
        return evictions

    def worth_admitting(self, module: ModuleSpec, tier: Tier, now: datetime) -> bool:
        """Whether the policy lets `module` into `tier` at the price of what `admit` would evict for it (see
        EvictionPolicy.admits). True when it is there already or fits, and when pinned modules leave too little
        room (`admit` says so)."""
        state = self._tier(tier)
        entry = self._modules.get(module.module_id)
        needed = state.used + module.bytes - state.capacity
        if needed <= 0 or (entry is not None and tier in entry.tiers):
            return True
        candidates = self._evictable(state, tier, now)
        if sum(c.bytes for c in candidates) < needed:
            return True
        chosen = set(self._policy.victims(candidates, needed, now))
        newcomer = self._newcomer(module, entry, tier, now)
        return self._policy.admits(newcomer, [c for c in candidates if c.module_id in chosen])

    def drop(self, module_id: str) -> tuple[Tier, ...]:
        """Removes a module from every tier, pinned or not (an invalidated module must never be served). Returns
        the tiers it left, fastest first; unknown ids are a no-op, so a redelivered event is harmless."""
        entry = self._modules.pop(module_id, None)
        if entry is None:
            return ()
        for tier in entry.tiers:
            self._tiers[tier].modules.discard(module_id)
            self._tiers[tier].used -= entry.spec.bytes
        return _fastest_first(entry.tiers)

    def remove(self, module_id: str, tier: Tier) -> bool:
        """Removes a module from one tier, pinned or not (a copy that failed verification, an operator's Evict).
        Not counted as an eviction. Returns whether the tier held it."""
        entry, state = self._modules.get(module_id), self._tier(tier)
        if entry is None or tier not in entry.tiers:
            return False
        entry.tiers.discard(tier)
        state.modules.discard(module_id)
        state.used -= entry.spec.bytes
        self._forget_if_unplaced(module_id)
        return True

    def idle_in(self, tier: Tier) -> frozenset[str]:
        """The modules `tier` holds that no running request uses now."""
        return frozenset(m for m in self._tier(tier).modules if self._modules[m].holds == 0)

    def hold(self, module_id: str) -> None:
        """A request starts using the resident module: until `release`, no admission evicts it."""
        self._known(module_id).holds += 1

    def release(self, module_id: str) -> None:
        """The request is done with it (a module dropped meanwhile is a no-op)."""
        entry = self._modules.get(module_id)
        if entry is not None and entry.holds > 0:
            entry.holds -= 1

    def pin(self, module_id: str) -> None:
        """Pins a resident module in every tier it is in, now and later: it is never evicted (only dropped)."""
        self._known(module_id).pinned = True

    def unpin(self, module_id: str) -> None:
        self._known(module_id).pinned = False

    # --- use -------------------------------------------------------------------------------------------------

    def hit(self, module_id: str, now: datetime) -> Tier | None:
        """Records a request served with the module: the fastest tier holding it counts a hit, each faster tier a
        miss. Returns that tier, or None when no cache tier holds it (every tier counts a miss; the module is
        loaded from the object store)."""
        entry = self._modules.get(module_id)
        serving = _fastest_first(entry.tiers)[0] if entry else None
        for tier in CACHE_TIERS:
            if tier == serving:
                self._tiers[tier].hits += 1
                break
            self._tiers[tier].misses += 1
        if entry:
            entry.record_hit(now)
        else:
            _record_hit(self._unplaced_hits.setdefault(module_id, deque()), now)
            self._unplaced_hits.move_to_end(module_id)
        self._forget_stale_hits(now)
        return serving

    def record_load(self, tier: Tier, nbytes: int, seconds: float, loads: int = 1) -> float:
        """Folds a measured load of `nbytes` (in `loads` modules) from `tier` into the engine, taking `seconds`, into
        the tier's reload cost per GiB, net of the tier's fixed cost per load. The first measurement replaces the
        configured guess; later ones enter an exponentially weighted average. Returns the new cost, ms per GiB."""
        if nbytes <= 0 or seconds < 0 or loads < 1:
            raise InvalidFieldError(
                "load", f"needs bytes > 0, seconds >= 0 and loads >= 1, got {nbytes} bytes, {seconds} s, {loads}"
            )
        net_ms = max(0.0, seconds * 1000 - loads * self._settings.load_fixed_ms[tier])
        measured = net_ms / (nbytes / GIB)
        alpha = self._settings.reload_ewma_alpha if tier in self._measured else 1.0
        self._reload_ms_per_gib[tier] = alpha * measured + (1 - alpha) * self._reload_ms_per_gib[tier]
        self._measured.add(tier)
        return self._reload_ms_per_gib[tier]

    # --- queries ---------------------------------------------------------------------------------------------

    def resident_tiers(self, module_id: str) -> tuple[Tier, ...]:
        """Cache tiers holding the module, fastest first; empty when none does."""
        entry = self._modules.get(module_id)
        return _fastest_first(entry.tiers) if entry else ()

    def reload_ms_per_gib(self, tier: Tier) -> float:
        """Current reload cost from `tier` into the engine, ms per GiB (net of the fixed cost per load)."""
        return self._reload_ms_per_gib[tier]

    def load_ms(self, tier: Tier, nbytes: int) -> float:
        """What loading `nbytes` from `tier` into the engine costs now, ms: the tier's fixed cost per load plus the
        bytes at its measured ms per GiB (the engine itself: 0)."""
        if tier is Tier.ENGINE:
            return 0.0
        return self._settings.load_fixed_ms[tier] + nbytes / GIB * self._reload_ms_per_gib[tier]

    def hits_last_15m(self, module_id: str, now: datetime) -> int:
        """Requests for the module in the 15 minutes before `now`, whether a tier held it or not."""
        entry = self._modules.get(module_id)
        if entry is not None:
            return entry.hits_last_15m(now)
        return _hits_within_window(self._unplaced_hits.get(module_id, ()), now)

    def module(self, module_id: str, now: datetime) -> ResidentModule:
        """A resident module's view; ModuleNotResidentError when no tier holds it."""
        return self._view(self._known(module_id), now)

    def stats(self, now: datetime) -> PoolStats:
        """Every cache tier's residency and counters, and every resident module (hits counted up to `now`)."""
        tiers = tuple(self._tier_stats(tier) for tier in CACHE_TIERS)
        modules = tuple(self._view(self._modules[module_id], now) for module_id in sorted(self._modules))
        return PoolStats(tiers=tiers, modules=modules)

    # --- internals -------------------------------------------------------------------------------------------

    def _make_room(self, state: _TierState, tier: Tier, module: ModuleSpec, now: datetime) -> list[Eviction]:
        needed = state.used + module.bytes - state.capacity
        if needed <= 0:
            return []
        candidates = self._evictable(state, tier, now)
        if sum(c.bytes for c in candidates) < needed:
            self._forget_if_unplaced(module.module_id)
            pinned = state.used - sum(c.bytes for c in candidates)  # pinned or held by running requests
            raise TierFullError(
                tier=tier, module_id=module.module_id, module_bytes=module.bytes, capacity_bytes=state.capacity,
                pinned_bytes=pinned,
            )  # fmt: skip
        return [self._evict(module_id, tier) for module_id in self._policy.victims(candidates, needed, now)]

    def _evictable(self, state: _TierState, tier: Tier, now: datetime) -> list[Candidate]:
        candidates = [self._candidate(self._modules[m], tier, now) for m in state.modules]
        return [c for c in candidates if not self._unevictable(c.module_id)]

    def _unevictable(self, module_id: str) -> bool:
        entry = self._modules[module_id]
        return entry.pinned or entry.holds > 0

    def _evict(self, module_id: str, tier: Tier) -> Eviction:
        entry, state = self._modules[module_id], self._tiers[tier]
        assert not self._unevictable(module_id), f"the eviction policy chose pinned or held module {module_id}"
        entry.tiers.discard(tier)
        state.modules.discard(module_id)
        state.used -= entry.spec.bytes
        state.evictions += 1
        self._forget_if_unplaced(module_id)
        return Eviction(module_id=module_id, tier=tier, bytes=entry.spec.bytes)

    def _candidate(self, entry: _Entry, tier: Tier, now: datetime) -> Candidate:
        """A resident module as the policy sees it."""
        return self._as_candidate(entry.spec, entry.tiers, tier, entry.hits_last_15m(now), entry.last_used_at)

    def _newcomer(self, module: ModuleSpec, entry: _Entry | None, tier: Tier, now: datetime) -> Candidate:
        """A module asking into `tier` as the policy sees it: used now."""
        tiers = entry.tiers if entry is not None else set()
        return self._as_candidate(module, tiers, tier, self.hits_last_15m(module.module_id, now), now)

    def _as_candidate(
        self, spec: ModuleSpec, tiers: set[Tier], tier: Tier, hits: int, last_used_at: datetime
    ) -> Candidate:
        """It would be reloaded from the fastest slower tier holding it, else from the object store."""
        slower = [t for t in CACHE_TIERS[CACHE_TIERS.index(tier) + 1 :] if t in tiers]
        source = slower[0] if slower else Tier.OBJECT_STORE
        return Candidate(
            module_id=spec.module_id,
            bytes=spec.bytes,
            hits_last_15m=hits,
            route_priority=spec.route_priority,
            last_used_at=last_used_at,
            reload_ms=self.load_ms(source, spec.bytes),
            served_ms=self.load_ms(tier, spec.bytes),
        )

    def _entry_for(self, module: ModuleSpec, now: datetime) -> _Entry:
        """The module's entry, created on first admission; a known module keeps its size and takes the new route
        priority (routes change; a module id's bytes do not)."""
        entry = self._modules.get(module.module_id)
        if entry is None:
            hit_times = self._unplaced_hits.pop(module.module_id, deque())
            entry = self._modules[module.module_id] = _Entry(spec=module, last_used_at=now, hit_times=hit_times)
        elif (entry.spec.bytes, entry.spec.token_count) != (module.bytes, module.token_count):
            raise InvalidFieldError("bytes", f"of module {module.module_id} differ from those it is resident with")
        else:
            entry.spec = module
        return entry

    def _forget_if_unplaced(self, module_id: str) -> None:
        """A module no tier holds is forgotten, but for its hits in the window."""
        entry = self._modules.get(module_id)
        if entry is not None and not entry.tiers:
            del self._modules[module_id]
            if entry.hit_times:
                self._unplaced_hits[module_id] = entry.hit_times

    def _forget_stale_hits(self, now: datetime) -> None:
        """Drops unplaced modules whose last hit left the window, least recently hit first (a module forgotten
        after others were hit may wait behind them: it goes within one window)."""
        while self._unplaced_hits:
            module_id, times = next(iter(self._unplaced_hits.items()))
            if times and times[-1] > now - HIT_WINDOW:
                return
            del self._unplaced_hits[module_id]

    def _known(self, module_id: str) -> _Entry:
        entry = self._modules.get(module_id)
        if entry is None:
            raise ModuleNotResidentError(module_id)
        return entry

    def _tier(self, tier: Tier) -> _TierState:
        if tier not in self._tiers:
            raise InvalidFieldError("tier", f"{tier} is not a cache tier (one of {[t.value for t in CACHE_TIERS]})")
        return self._tiers[tier]

    def _tier_stats(self, tier: Tier) -> TierStats:
        state = self._tiers[tier]
        return TierStats(
            tier=tier,
            modules=len(state.modules),
            bytes=state.used,
            capacity_bytes=state.capacity,
            hits=state.hits,
            misses=state.misses,
            evictions=state.evictions,
            reload_ms_per_gib=self._reload_ms_per_gib[tier],
        )

    def _view(self, entry: _Entry, now: datetime) -> ResidentModule:
        return ResidentModule(
            module_id=entry.spec.module_id,
            tiers=_fastest_first(entry.tiers),
            bytes=entry.spec.bytes,
            token_count=entry.spec.token_count,
            pinned=entry.pinned,
            route_priority=entry.spec.route_priority,
            hits_last_15m=entry.hits_last_15m(now),
            last_used_at=entry.last_used_at,
        )


def _fastest_first(tiers: set[Tier]) -> tuple[Tier, ...]:
    return tuple(t for t in CACHE_TIERS if t in tiers)


def _hits_within_window(hit_times: Iterable[datetime], now: datetime) -> int:
    """Hits in the 15 minutes before `now` (a hit exactly 15 minutes old no longer counts)."""
    return sum(1 for t in hit_times if t > now - HIT_WINDOW)


def _record_hit(hit_times: deque[datetime], now: datetime) -> None:
    hit_times.append(now)
    while hit_times and hit_times[0] <= now - HIT_WINDOW:
        hit_times.popleft()
