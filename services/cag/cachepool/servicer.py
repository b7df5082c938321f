"""The cache pool's gRPC servicer: each method checks the caller, unpacks, calls the pool, packs.

Errors are mapped to statuses by the shared interceptor (cag.rpc.errors); the auth interceptor verified the
caller's token before any method runs. Only the router's service identity and admins may call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from typing_extensions import override

from cag.cachepool.answer import Answerer, EvidenceAsk
from cag.cachepool.convert import (
    ask_of,
    cache_tier_of,
    resident_of,
    response_of,
    sampling_of,
    stats_of,
)
from cag.cachepool.core import Tier
from cag.errors import PermissionDeniedError
from cag.identifiers import check_module_id, check_name
from cag.rpc.auth import current_caller
from cag.v1 import cachepool_pb2, cachepool_pb2_grpc, common_pb2

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = cachepool_pb2.DESCRIPTOR.services_by_name["CachePoolService"].full_name


@dataclass(frozen=True, kw_only=True)
class ServingLimits:
    router_subject: str  # the one service identity, besides admins, that may call Generate and the rest
    fallback_subject: str  # the one, besides admins, that may call GenerateFromEvidence
    default_max_new_tokens: int
    max_new_tokens_limit: int


class CachePoolServicer(cachepool_pb2_grpc.CachePoolServiceServicer):
    def __init__(self, answerer: Answerer, limits: ServingLimits, *, replica_id: str) -> None:
        self.answerer = answerer
        self.pool = answerer.pool
        self.limits = limits
        self.replica_id = replica_id  # as Stats reports it: the key of its announcement (cag.events.replicas)

    def _authorize(self) -> None:
        caller = current_caller()
        if caller.subject != self.limits.router_subject and not caller.is_admin:
            raise PermissionDeniedError(f"{caller.subject} may not call the cache pool: only the router and admins may")

    @override
    async def Generate(
        self, request: cachepool_pb2.CachePoolGenerateRequest, context: Context
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        arrived = time.perf_counter()
        self._authorize()
        sampling = sampling_of(
            request.sampling,
            default_max_new_tokens=self.limits.default_max_new_tokens,
            limit=self.limits.max_new_tokens_limit,
        )
        ask = ask_of(request, sampling)
        async for event in self.answerer.answer(ask, arrived=arrived):
            yield response_of(event, module_ids=ask.module_ids)

    @override
    async def GenerateFromEvidence(
        self, request: cachepool_pb2.EvidenceGenerateRequest, context: Context
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        arrived = time.perf_counter()
        caller = current_caller()
        if caller.subject != self.limits.fallback_subject and not caller.is_admin:
            raise PermissionDeniedError(f"{caller.subject} may not generate from evidence: only the fallback may")
        sampling = sampling_of(
            request.sampling,
            default_max_new_tokens=self.limits.default_max_new_tokens,
            limit=self.limits.max_new_tokens_limit,
        )
        ask = EvidenceAsk(
            tenant_id=check_name("tenant_id", request.tenant_id),
            layout_json=request.layout,
            passages=tuple((p.title, p.text) for p in request.evidence),
            query=request.query,
            sampling=sampling,
        )
        async for event in self.answerer.answer_evidence(ask, arrived=arrived):
            response = response_of(event, module_ids=())
            if response.HasField("done"):
                response.done.path = common_pb2.ANSWER_PATH_FALLBACK
            yield response

    @override
    async def Prefetch(
        self, request: cachepool_pb2.PrefetchRequest, context: Context
    ) -> cachepool_pb2.PrefetchResponse:
        self._authorize()
        tier = cache_tier_of(request.tier, unspecified=Tier.ENGINE)
        assert tier is not None
        records = await self.pool.resolve(request.module_ids, None, chain=tier is Tier.ENGINE)
        await self.pool.prefetch(records, tier)
        return cachepool_pb2.PrefetchResponse(
            modules=[resident_of(self.pool.view(r.module_id), r.module_id) for r in records]
        )

    @override
    async def Pin(self, request: cachepool_pb2.PinRequest, context: Context) -> cachepool_pb2.PinResponse:
        self._authorize()
        module_id = check_module_id(request.module_id)
        if request.pinned:
            self.pool.residency.pin(module_id)
        else:
            self.pool.residency.unpin(module_id)
        return cachepool_pb2.PinResponse(module=resident_of(self.pool.view(module_id), module_id))

    @override
    async def Evict(self, request: cachepool_pb2.EvictRequest, context: Context) -> cachepool_pb2.EvictResponse:
        self._authorize()
        module_id = check_module_id(request.module_id)
        self.pool.evict(module_id, cache_tier_of(request.tier, unspecified=None))
        return cachepool_pb2.EvictResponse(module=resident_of(self.pool.view(module_id), module_id))

    @override
    async def Stats(self, request: cachepool_pb2.StatsRequest, context: Context) -> cachepool_pb2.StatsResponse:
        self._authorize()
        pool, scheduler = self.pool, self.answerer.scheduler
        await pool.reconcile_engine()  # what the engine holds now, not as of the last request
        ttft = self.answerer.ttft
        return stats_of(
            pool.residency.stats(pool.now()),
            origin_hits=pool.origin_hits,
            origin_reload_ms_per_gib=pool.residency.reload_ms_per_gib(Tier.OBJECT_STORE),
            queued=scheduler.queued,
            running=scheduler.running,
            invalidations=pool.invalidations,
            ttft=ttft.summary(time.perf_counter()),
            ttft_window_s=ttft.window_s,
            replica_id=self.replica_id,
        )
