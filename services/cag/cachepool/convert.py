"""cag.v1 messages ↔ the cache pool's domain types: every request field read and validated here, at the edge."""

from __future__ import annotations

import math

from cag.acl import AclScope
from cag.cachepool.answer import Ask, Chunk, Summary
from cag.cachepool.core import PoolStats, ResidentModule, Tier
from cag.cachepool.core.latency import LatencySummary
from cag.cachepool.core.snapshot import ModuleRecord, ModuleState, StateChange
from cag.engine import SamplingParams
from cag.errors import InvalidFieldError
from cag.identifiers import check_name
from cag.rpc.timestamps import timestamp_of
from cag.v1 import cachepool_pb2, common_pb2, registry_pb2

TIERS = {
    Tier.ENGINE: common_pb2.TIER_ENGINE,
    Tier.HOST_RAM: common_pb2.TIER_HOST_RAM,
    Tier.LOCAL_DISK: common_pb2.TIER_LOCAL_DISK,
    Tier.OBJECT_STORE: common_pb2.TIER_ORIGIN,
}
CACHE_TIER_OF = {proto: tier for tier, proto in TIERS.items() if tier is not Tier.OBJECT_STORE}
FINISH = {"stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH}
# route_priority beyond this buys nothing more in eviction and only invites abuse of the keep value.
MAX_ROUTE_PRIORITY = 1000


def state_of(value: common_pb2.ModuleState.ValueType) -> ModuleState:
    if value == common_pb2.MODULE_STATE_UNSPECIFIED:
        raise InvalidFieldError("state", "is unspecified")
    return ModuleState(common_pb2.ModuleState.Name(value).removeprefix("MODULE_STATE_").lower())


def record_of(module: common_pb2.Module) -> ModuleRecord:
    """The registry's record, as the pool serves from it."""
    return ModuleRecord(
        module_id=module.module_id,
        tenant_id=module.tenant_id,
        acl_scope=AclScope(common_pb2.AclScope.Name(module.acl_scope).removeprefix("ACL_SCOPE_").lower()),
        version=module.version,
        state=state_of(module.state),
        storage_uri=module.storage_uri,
        tensor_checksum=module.tensor_checksum,
        header_sha256=module.header_sha256,
        token_count=module.token_count,
        parent_id=module.parent_id,
        parent_chain_hash=module.parent_chain_hash,
        chain_hash=module.chain_hash,
        model_name=module.model_name,
        layout_hash=module.layout_hash,
        layout=module.layout,
    )


def change_of(change: registry_pb2.ModuleChange) -> StateChange:
    return StateChange(module_id=change.module_id, state=state_of(change.state), version=change.version)


def sampling_of(sampling: common_pb2.SamplingParams, *, default_max_new_tokens: int, limit: int) -> SamplingParams:
    """SamplingParams, with 0s read as the proto says (server default length, greedy, no nucleus cut)."""
    max_new = sampling.max_new_tokens or default_max_new_tokens
    if not 0 < max_new <= limit:
        raise InvalidFieldError("sampling.max_new_tokens", f"must be in [0, {limit}], not {sampling.max_new_tokens}")
    if not math.isfinite(sampling.temperature) or not math.isfinite(sampling.top_p):
        raise InvalidFieldError("sampling", "temperature and top_p must be finite numbers")
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=sampling.temperature,
        top_p=sampling.top_p or 1.0,
        seed=sampling.seed,
    )


def ask_of(request: cachepool_pb2.CachePoolGenerateRequest, sampling: SamplingParams) -> Ask:
    if not 0 <= request.route_priority <= MAX_ROUTE_PRIORITY:
        raise InvalidFieldError("route_priority", f"must be in [0, {MAX_ROUTE_PRIORITY}]")
    if not 0 <= request.route_confidence <= 1:  # NaN fails too
        raise InvalidFieldError("route_confidence", f"must be in [0, 1], not {request.route_confidence}")
    return Ask(
        module_ids=tuple(request.module_ids),
        query=request.query,
        sampling=sampling,
        tenant_id=check_name("tenant_id", request.tenant_id),
        route_priority=max(1, request.route_priority),
        route_confidence=request.route_confidence,
    )


def cache_tier_of(tier: common_pb2.Tier.ValueType, *, unspecified: Tier | None) -> Tier | None:
    """A request's tier: TIER_UNSPECIFIED means `unspecified`; the origin is no tier a request may name."""
    if tier == common_pb2.TIER_UNSPECIFIED:
        return unspecified
    if tier not in CACHE_TIER_OF:
        raise InvalidFieldError("tier", f"must be a cache tier (engine, host RAM, local disk), not {tier}")
    return CACHE_TIER_OF[tier]


def response_of(event: Chunk | Summary, *, module_ids: tuple[str, ...]) -> common_pb2.GenerateResponse:
    if isinstance(event, Chunk):
        chunk = common_pb2.TokenChunk(text=event.text, token_ids=list(event.token_ids), index=event.index)
        return common_pb2.GenerateResponse(token=chunk)
    return common_pb2.GenerateResponse(done=summary_of(event, module_ids=module_ids))


def summary_of(summary: Summary, *, module_ids: tuple[str, ...]) -> common_pb2.GenerateSummary:
    return common_pb2.GenerateSummary(
        ttft_ms=summary.ttft_s * 1000,
        total_ms=summary.total_s * 1000,
        tokens=summary.tokens,
        prefill_tokens=summary.prefill_tokens,
        cached_tokens=summary.cached_tokens,
        path=common_pb2.ANSWER_PATH_MODULE,
        module_ids=list(module_ids),
        finish_reason=FINISH.get(summary.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED),
        modules=[
            common_pb2.ServedModule(module_id=m.module_id, version=m.version, tier=TIERS[m.tier])
            for m in summary.modules
        ],
        queue_ms=summary.queue_s * 1000,
        restore_ms=summary.restore_s * 1000,
        prefill_ms=summary.prefill_s * 1000,
        decode_ms=summary.decode_s * 1000,
        trace_id=summary.trace_id,
    )


def resident_of(module: ResidentModule | None, module_id: str) -> cachepool_pb2.ResidentModule:
    """A module's residency; one in no tier is just its id."""
    if module is None:
        return cachepool_pb2.ResidentModule(module_id=module_id)
    return cachepool_pb2.ResidentModule(
        module_id=module.module_id,
        tiers=[TIERS[t] for t in module.tiers],
        bytes=module.bytes,
        token_count=module.token_count,
        pinned=module.pinned,
        hits_last_15m=module.hits_last_15m,
        last_used_at=timestamp_of(module.last_used_at),
    )


def stats_of(
    stats: PoolStats,
    *,
    origin_hits: int,
    origin_reload_ms_per_gib: float,
    queued: int,
    running: int,
    invalidations: int,
    ttft: LatencySummary,
    ttft_window_s: float,
    replica_id: str,
) -> cachepool_pb2.StatsResponse:
    tiers = [
        cachepool_pb2.TierStats(
            tier=TIERS[t.tier],
            modules=t.modules,
            bytes=t.bytes,
            capacity_bytes=t.capacity_bytes,
            hits=t.hits,
            misses=t.misses,
            reload_ms_per_gib=t.reload_ms_per_gib,
            evictions=t.evictions,
        )
        for t in stats.tiers
    ]
    # The origin holds every module and is never missed; its hits are the lookups no cache tier answered.
    tiers.append(
        cachepool_pb2.TierStats(
            tier=common_pb2.TIER_ORIGIN, hits=origin_hits, reload_ms_per_gib=origin_reload_ms_per_gib
        )
    )
    return cachepool_pb2.StatsResponse(
        tiers=tiers,
        modules=[resident_of(m, m.module_id) for m in stats.modules],
        queued=queued,
        running=running,
        invalidations=invalidations,
        ttft_p50_ms=ttft.p50_s * 1000,
        ttft_p99_ms=ttft.p99_s * 1000,
        ttft_samples=ttft.samples,
        ttft_window_s=ttft_window_s,
        replica_id=replica_id,
    )
