"""Promotion: whether a module just served from a slow tier is worth copying up to host RAM and to the engine.

A pure rule, no I/O and no clock: the caller passes what it knows of the module (its hits in the 15 minutes
before now, the route's confidence in it, the tier the lookup found it in) and gets back the faster tiers to
copy it into and whether to pin it. System and tool parents (public modules with no parent: every tenant's
chains start from them) are always promoted to both tiers and pinned, whatever their hits.
"""

from __future__ import annotations

from dataclasses import dataclass

from cag.acl import AclScope
from cag.cachepool.core.residency import CACHE_TIERS, Tier
from cag.errors import InvalidFieldError

PROMOTION_TIERS = (Tier.ENGINE, Tier.HOST_RAM)  # the tiers a promotion copies into, fastest first


@dataclass(frozen=True, kw_only=True)
class Promotion:
    """What to do with a module after a lookup: the tiers to copy it into, fastest first, and whether to pin it."""

    copy_to: tuple[Tier, ...]
    pin: bool

    @property
    def to_engine(self) -> bool:
        return Tier.ENGINE in self.copy_to

    @property
    def to_host_ram(self) -> bool:
        return Tier.HOST_RAM in self.copy_to


@dataclass(frozen=True, kw_only=True)
class PromotionRule:
    """Hits (in the 15 minutes before now, the current request's included) that earn a module a copy in host
    RAM and in the engine; a route at least `confident_at` sure of the module earns them with fewer.

    The engine is the scarcer tier, so it asks for at least as many hits as host RAM: a module hot enough for
    the engine is always hot enough for host RAM too (the pool restores into the engine from RAM)."""

    ram_min_hits: int = 2
    engine_min_hits: int = 6
    # Route priority/confidence in [0, 1] from which the confident thresholds below apply.
    confident_at: float = 0.8
    confident_ram_min_hits: int = 1
    confident_engine_min_hits: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.confident_at <= 1:
            raise InvalidFieldError("confident_at", "must be in [0, 1]")
        if min(self.confident_ram_min_hits, self.ram_min_hits) < 1:
            raise InvalidFieldError("ram_min_hits", "must be at least 1 (a module is promoted on a hit)")
        for tier, plain, confident in (
            ("ram", self.ram_min_hits, self.confident_ram_min_hits),
            ("engine", self.engine_min_hits, self.confident_engine_min_hits),
        ):
            if confident > plain:
                raise InvalidFieldError(f"confident_{tier}_min_hits", f"must be at most {tier}_min_hits ({plain})")
        if self.engine_min_hits < self.ram_min_hits:
            raise InvalidFieldError("engine_min_hits", f"must be at least ram_min_hits ({self.ram_min_hits})")
        if self.confident_engine_min_hits < self.confident_ram_min_hits:
            raise InvalidFieldError(
                "confident_engine_min_hits", f"must be at least confident_ram_min_hits ({self.confident_ram_min_hits})"
            )

    def decide(
        self, *, hits_last_15m: int, confidence: float, found_in: Tier, acl_scope: AclScope, parent_id: str
    ) -> Promotion:
        """The promotion for a module found in `found_in` (a cache tier or OBJECT_STORE). `parent_id` is "" for a
        root module. Only tiers faster than `found_in` are named: a copy is never made where one already is."""
        if hits_last_15m < 0:
            raise InvalidFieldError("hits_last_15m", "must be >= 0")
        if not 0 <= confidence <= 1:
            raise InvalidFieldError("confidence", "must be in [0, 1]")
        pin = is_system_parent(acl_scope, parent_id)
        earned = PROMOTION_TIERS if pin else self._earned(hits_last_15m, confidence)
        return Promotion(copy_to=tuple(t for t in earned if _faster(t, found_in)), pin=pin)

    def _earned(self, hits: int, confidence: float) -> tuple[Tier, ...]:
        confident = confidence >= self.confident_at
        ram_needs = self.confident_ram_min_hits if confident else self.ram_min_hits
        engine_needs = self.confident_engine_min_hits if confident else self.engine_min_hits
        return tuple(t for t, needs in ((Tier.ENGINE, engine_needs), (Tier.HOST_RAM, ram_needs)) if hits >= needs)


def is_system_parent(acl_scope: AclScope, parent_id: str) -> bool:
    """A system or tool parent: public to every tenant and the root of its chains."""
    return acl_scope is AclScope.PUBLIC and not parent_id


def _faster(tier: Tier, than: Tier) -> bool:
    order = (*CACHE_TIERS, Tier.OBJECT_STORE)
    return order.index(tier) < order.index(than)
