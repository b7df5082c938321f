"""The cache pool's pure core: residency bookkeeping per tier, byte budgets, pinning and eviction policies.
Does no I/O and reads no clock (callers pass `now`); imports no torch, gRPC, FastStream or generated protos
(an import-linter contract keeps it so)."""

from cag.cachepool.core.errors import ModuleNotResidentError, TierFullError
from cag.cachepool.core.policies import (
    POLICIES,
    Candidate,
    CostAwarePolicy,
    EvictionPolicy,
    LFUPolicy,
    LRUPolicy,
    policy_named,
)
from cag.cachepool.core.promotion import Promotion, PromotionRule, is_system_parent
from cag.cachepool.core.residency import (
    CACHE_TIERS,
    Eviction,
    ModuleSpec,
    PoolSettings,
    PoolStats,
    Residency,
    ResidentModule,
    Tier,
    TierBudgets,
    TierStats,
)

__all__ = [
    "CACHE_TIERS",
    "POLICIES",
    "Candidate",
    "CostAwarePolicy",
    "Eviction",
    "EvictionPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "ModuleNotResidentError",
    "ModuleSpec",
    "PoolSettings",
    "PoolStats",
    "Promotion",
    "PromotionRule",
    "Residency",
    "ResidentModule",
    "Tier",
    "TierBudgets",
    "TierFullError",
    "TierStats",
    "is_system_parent",
    "policy_named",
]
