"""Protos promise only what code does, for the serving path too: every field of every request the router and the
cache pool handle is read by its handler (the walk and the recording proxy of tests/unit/registry/
test_request_fields.py, here with doubles of the router's decider and the cache pool's pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from google.protobuf.message import Message

from cag.auth.caller import SYSTEM
from cag.cachepool import servicer as cachepool_servicer
from cag.cachepool.answer import Summary
from cag.cachepool.core import ModuleSpec, PoolSettings, Residency, ResidentModule, Tier, TierBudgets
from cag.cachepool.core.latency import LatencyWindow
from cag.router import servicer as router_servicer
from cag.router.core import AnswerPath, Basis, Decision
from cag.v1 import cachepool_pb2, common_pb2, router_pb2
from tests.unit.registry.test_request_fields import IGNORED, Reads, Recorded, fields_of, set_fields

GIB = 1 << 30
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SAMPLING = common_pb2.SamplingParams(max_new_tokens=8, temperature=0.5, top_p=0.9, seed=7)
CP = cachepool_pb2
ROUTER_SEEDS: dict[str, list[Message]] = {
    method: [
        router_pb2.GenerateRequest(
            tenant_id="acme", query="How do refunds work?", metadata={"intent": "billing"}, sampling=SAMPLING
        )
    ]
    for method in ("Generate", "Explain")
}
CACHEPOOL_SEEDS: dict[str, list[Message]] = {
    "Generate": [
        CP.CachePoolGenerateRequest(
            module_ids=["shared-a", "billing-a"],
            query="q",
            sampling=SAMPLING,
            tenant_id="acme",
            route_priority=2,
            route_confidence=0.9,
        )
    ],
    "GenerateFromEvidence": [
        CP.EvidenceGenerateRequest(
            tenant_id="acme",
            layout="{}",
            evidence=[CP.EvidencePassage(title="Refunds", text="Refunds take five days.")],
            query="q",
            sampling=SAMPLING,
        )
    ],
    "Prefetch": [CP.PrefetchRequest(module_ids=["shared-a"], tier=common_pb2.TIER_HOST_RAM)],
    "Pin": [CP.PinRequest(module_id="shared-a", pinned=True), CP.PinRequest(module_id="shared-a", pinned=False)],
    "Evict": [CP.EvictRequest(module_id="shared-a", tier=common_pb2.TIER_HOST_RAM)],
    "Stats": [CP.StatsRequest()],
}


class Anything:
    """Accepts any call and answers `answer` (sync) — a double of the parts a handler hands its request to."""

    def __init__(self, **answers: Any) -> None:
        self._answers = answers

    def __getattr__(self, name: str) -> Any:
        if name in self._answers:
            return self._answers[name]
        return Anything()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return None


def _decision() -> Decision:
    return Decision(
        decision_id="d", tenant_id="acme", route="billing", chain=(), basis=Basis.NONE, rule_id="", rule_version=1,
        confidence=0.0, path=AnswerPath.FALLBACK, reason="test",
    )  # fmt: skip


class Decider:
    async def decide(self, caller: object, request: router_servicer.RouteRequest) -> Decision:
        _ = (request.tenant_id, request.query, dict(request.metadata))  # what the real decider reads
        return _decision()


class FallbackCall:
    """The fallback's stream on the fallback path: the summary only."""

    def __aiter__(self) -> AsyncIterator[common_pb2.GenerateResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[common_pb2.GenerateResponse]:
        yield common_pb2.GenerateResponse(done=common_pb2.GenerateSummary(path=common_pb2.ANSWER_PATH_FALLBACK))

    def cancel(self) -> None:
        return None


class Fallback:
    def generate(self, request: Any, *, timeout_s: float | None) -> FallbackCall:
        return FallbackCall()


class Answerer:
    def __init__(self) -> None:
        resident = ResidentModule(
            module_id="shared-a", tiers=(Tier.HOST_RAM,), bytes=1, token_count=1, pinned=False, hits_last_15m=0,
            route_priority=1,
            last_used_at=datetime(2026, 1, 1, tzinfo=UTC),
        )  # fmt: skip

        async def resolve(*args: Any, **kwargs: Any) -> list[Any]:
            return [Anything(module_id="shared-a")]

        async def prefetch(*args: Any) -> None:
            return None

        async def reconcile_engine() -> None:
            return None

        # The pure residency core itself: Pin, Evict and Stats read it.
        residency = Residency(
            PoolSettings(budgets=TierBudgets(engine_bytes=GIB, host_ram_bytes=GIB, local_disk_bytes=GIB))
        )
        residency.admit(ModuleSpec(module_id="shared-a", bytes=1, token_count=1), Tier.HOST_RAM, NOW)
        self.pool = Anything(
            resolve=resolve, prefetch=prefetch, view=lambda module_id: resident, residency=residency,
            now=lambda: NOW, origin_hits=0, invalidations=0, evict=lambda module_id, tier: None,
            reconcile_engine=reconcile_engine,
        )  # fmt: skip
        self.scheduler = Anything(queued=0, running=0)
        self.ttft = LatencyWindow()

    async def answer_evidence(self, ask: Any, *, arrived: float) -> AsyncIterator[Summary]:
        _ = (ask.layout_json, ask.passages, ask.query)
        async for summary in self.answer(ask, arrived=arrived):
            yield summary

    async def answer(self, ask: Any, *, arrived: float) -> AsyncIterator[Summary]:
        yield Summary(
            modules=(), finish_reason="stop", tokens=1, prefill_tokens=1, cached_tokens=0, ttft_s=0.0, total_s=0.0,
            queue_s=0.0, restore_s=0.0, prefill_s=0.0, decode_s=0.0,
        )  # fmt: skip


def servicer_for(service: str) -> Any:
    if service == "router":
        return router_servicer.RouterServicer(
            cast("Any", Decider()), cast("Any", Anything()), cast("Any", Anything()), cast("Any", Fallback())
        )
    limits = cachepool_servicer.ServingLimits(
        router_subject="service:router",
        fallback_subject="service:fallback",
        default_max_new_tokens=8,
        max_new_tokens_limit=64,
    )
    return cachepool_servicer.CachePoolServicer(cast("Any", Answerer()), limits, replica_id="pool-a")


async def call(servicer: Any, method: str, request: Message) -> Reads:
    reads: Reads = set()
    answer = getattr(servicer, method)(cast("Any", Recorded(request, reads)), Anything())
    if isinstance(answer, AsyncIterator):
        async for _ in answer:
            pass
    else:
        await answer
    return reads


CASES = [("router", m, s) for m, s in ROUTER_SEEDS.items()] + [("cachepool", m, s) for m, s in CACHEPOOL_SEEDS.items()]


@pytest.mark.parametrize(("service", "method", "seeds"), CASES, ids=[f"{s}.{m}" for s, m, _ in CASES])
async def test_every_request_field_is_read_by_its_handler(
    service: str, method: str, seeds: list[Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_servicer, "current_caller", lambda: SYSTEM)
    monkeypatch.setattr(cachepool_servicer, "current_caller", lambda: SYSTEM)
    descriptor = seeds[0].DESCRIPTOR
    assert not set(fields_of(descriptor)) - {f for seed in seeds for f in set_fields(seed)}, "seed every field"
    reads: Reads = set()
    for seed in seeds:
        reads |= await call(servicer_for(service), method, seed)
    unread = sorted(set(fields_of(descriptor)) - reads - set(IGNORED))
    assert not unread, f"{service}.{method}: no handler reads {unread}; implement them or remove them from the proto"
