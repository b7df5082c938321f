"""The serving path end to end, every hop a real gRPC server: SDK client → router → cache pool (→ registry).

The answer through the router is the in-process engine's answer, token for token; one trace covers the client,
the router and the cache pool; a query no route matches and a module invalidated while being served are answered
by the fallback from named evidence, and with the fallback down the client is told which service is missing; bad
input gets a clear status and the router keeps serving.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cag.client import (
    Answer,
    AsyncCagClient,
    CagClient,
    CagClientError,
    FallbackUnavailableError,
    InvalidArgumentError,
    PermissionDeniedError,
    Sampling,
    UnauthenticatedError,
)
from cag.engine import Engine, GenerateRequest, SamplingParams
from cag.events.schemas import STREAM, Envelope, FallbackServedV1
from cag.kvmodule import ModuleFile
from cag.layout import PromptLayout, parse_layout
from cag.models import ModelFiles
from cag.v1 import registry_pb2
from tests.conftest import KNOWLEDGE
from tests.e2e.conftest import ROUTE, Platform
from tests.infra_fixtures import Infra
from tests.support.metrics import sample, scrape

QUESTION = "How do refunds work?"  # the rule "refunds" picks the billing route
GREEDY = Sampling(max_new_tokens=12)


def in_process_answer(engine: Engine, platform: Platform, tiny_model: ModelFiles, query: str) -> list[int]:
    from transformers import AutoTokenizer

    modules = [ModuleFile.open(p) for p in platform.chain]
    prompt = PromptLayout(
        parse_layout(modules[-1].metadata.layout), AutoTokenizer.from_pretrained(tiny_model.tokenizer_path)
    )
    sampling = SamplingParams(max_new_tokens=12, stop_sequences=prompt.paragraph_break_sequences())
    request = GenerateRequest(chain=modules, suffix=prompt.suffix_tokens(query), sampling=sampling)
    return [event.token_id for event in engine.generate(request)]


async def test_the_router_answers_with_the_in_process_engines_tokens(
    platform: Platform, serving_engine: Engine, tiny_model: ModelFiles
) -> None:
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        first = await cag.ask(QUESTION, sampling=GREEDY)
        again = await cag.ask(QUESTION, sampling=GREEDY)
        third = await cag.ask(QUESTION, sampling=GREEDY)
        fourth = await cag.ask(QUESTION, sampling=GREEDY)
    expected = in_process_answer(serving_engine, platform, tiny_model, QUESTION)
    assert list(first.token_ids) == expected == list(again.token_ids)
    assert first.decision is not None
    assert (first.decision.route, first.decision.basis, first.decision.rule_id) == (ROUTE, "rule", "refunds")
    assert [m.module_id for m in first.summary.modules] == platform.module_ids()
    assert [m.version for m in first.summary.modules] == [1, 1]
    # The rule's route is sure of itself (confidence 1, passed on to the pool): the pool's promotion rule grants its
    # modules host RAM on their first hit and a place in the engine from their third.
    tiers = [{m.tier for m in answer.summary.modules} for answer in (again, third, fourth)]
    assert tiers == [{"host_ram"}, {"host_ram"}, {"engine"}]
    assert first.summary.path == "module" and first.summary.ttft_ms > 0


async def test_one_trace_covers_client_router_and_cache_pool(platform: Platform, spans: InMemorySpanExporter) -> None:
    spans.clear()
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        answer = await cag.ask(QUESTION, sampling=GREEDY)
    trace_id = answer.summary.trace_id
    assert len(trace_id) == 32
    mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    by_id = {s.context.span_id: s for s in mine}
    names = {s.name for s in mine}
    assert {"router.route", "cachepool.resolve", "cachepool.load", "cachepool.schedule", "cachepool.prefill",
            "cachepool.decode"} <= names  # fmt: skip
    servers = {s.name: s for s in mine if s.kind.name == "SERVER"}
    assert {"/cag.v1.RouterService/Generate", "/cag.v1.CachePoolService/Generate"} <= set(servers)
    # The tree: the pool's server span descends from the router's (through the router's client span), and the
    # pool's own steps are children of the pool's server span.
    pool_server = servers["/cag.v1.CachePoolService/Generate"]
    above_pool = ancestors(pool_server, by_id)
    assert above_pool[0].kind.name == "CLIENT"
    assert servers["/cag.v1.RouterService/Generate"] in above_pool
    for step in ("cachepool.load", "cachepool.prefill", "cachepool.decode"):
        [found] = [s for s in mine if s.name == step]
        assert pool_server in ancestors(found, by_id)


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """The span's parent, its parent's parent, ... as far as they were recorded here."""
    chain = []
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        found = by_id[parent.span_id]
        chain.append(found)
        parent = found.parent
    return chain


def assert_answered_from_evidence(answer: Answer, source: Path) -> None:
    """A fallback answer naming each chunk it used, whose offsets hold that chunk's place in its source."""
    assert answer.decision is not None and answer.decision.path == "fallback"
    assert answer.summary.path == "fallback" and answer.summary.tokens > 0
    evidence = answer.summary.evidence
    assert evidence and [e.chunk_id for e in evidence] == list(answer.summary.evidence_ids)
    assert source.as_uri() in {e.source_uri for e in evidence}
    assert all(0 <= e.char_start < e.char_end for e in evidence)
    assert answer.summary.prefill_tokens > 0


async def served_event(request_id: str, events: JetStreamContext.PullSubscription) -> FallbackServedV1:
    """The cag.fallback.served event of one request (others may be published meanwhile)."""
    for _ in range(50):
        for message in await events.fetch(1, timeout=10):
            await message.ack()
            event = FallbackServedV1.model_validate(Envelope.model_validate_json(message.data).data)
            if event.request_id == request_id:
                return event
    raise AssertionError(f"no cag.fallback.served for {request_id}")


async def test_a_query_no_route_matches_is_answered_by_the_fallback_from_named_evidence(
    platform: Platform, infra: Infra
) -> None:
    client = await nats.connect(infra.nats_url)
    events = await client.jetstream().pull_subscribe(
        FallbackServedV1.subject, durable=f"t-served-{uuid.uuid4().hex[:8]}", stream=STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
    )  # fmt: skip
    try:
        async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
            answer = await cag.ask("Can I pay for my order in installments with PayPal?", sampling=GREEDY)
        assert answer.decision is not None and answer.decision.reason == "no rule matched; serving fallback"
        assert_answered_from_evidence(answer, KNOWLEDGE / "billing")
        first = next(e for e in answer.summary.evidence if e.source_uri == (KNOWLEDGE / "billing").as_uri())
        assert first.char_end <= len((KNOWLEDGE / "billing" / first.path).read_text())
        event = await served_event(answer.decision.decision_id, events)
    finally:
        await client.close()
    assert (event.tenant_id, event.route, event.query) == (
        "acme",
        "",
        "Can I pay for my order in installments with PayPal?",
    )
    assert event.evidence_ids == list(answer.summary.evidence_ids)
    assert (KNOWLEDGE / "billing").as_uri() in event.source_uris
    assert event.answer == answer.text and event.reason == "no rule matched; serving fallback"


async def test_the_fallback_serves_its_time_to_first_token_and_retrieval_time(platform: Platform) -> None:
    port = platform.fallback.settings.metrics_port
    ttft, retrieval = (
        'cag_ttft_seconds_count{path="fallback",service="fallback"}',
        "cag_fallback_retrieval_seconds_count",
    )
    before = await asyncio.to_thread(scrape, port)
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        answer = await cag.ask("Can I pay for my order in installments with PayPal?", sampling=GREEDY)
    assert answer.summary.path == "fallback" and answer.summary.tokens > 0
    after = await asyncio.to_thread(scrape, port)
    assert (sample(after, ttft) - sample(before, ttft), sample(after, retrieval) - sample(before, retrieval)) == (1, 1)


async def test_an_invalidated_module_takes_the_fallback_path(platform: Platform) -> None:
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        await cag.ask(QUESTION, sampling=GREEDY)
        leaf = platform.module_ids()[-1]
        trigger = registry_pb2.InvalidateRequest(module=registry_pb2.ModuleTrigger(module_id=leaf), reason="test")
        await platform.registry.admin().stub.Invalidate(trigger)
        for _ in range(200):  # the router follows the registry's feed: wait for it to see the change
            if (await cag.explain(QUESTION)).path == "fallback":
                break
            await asyncio.sleep(0.05)
        answer = await cag.ask(QUESTION, sampling=GREEDY)
    assert_answered_from_evidence(answer, KNOWLEDGE / "billing")


async def test_with_the_fallback_service_down_a_fallback_query_is_unavailable_naming_it(platform: Platform) -> None:
    await platform.fallback.stop()
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        with pytest.raises(FallbackUnavailableError) as caught:
            await cag.ask("Can I pay for my order in installments with PayPal?", sampling=GREEDY)
        assert (await cag.ask(QUESTION, sampling=GREEDY)).summary.path == "module"  # the module path still serves
    assert caught.value.reason == "FALLBACK_UNAVAILABLE"
    assert platform.fallback.settings.address in str(caught.value)


@pytest.mark.parametrize(
    ("token", "tenant", "query", "metadata", "error", "reason"),
    [
        ("none", None, QUESTION, {}, UnauthenticatedError, "UNAUTHENTICATED"),
        ("forged", None, QUESTION, {}, UnauthenticatedError, "UNAUTHENTICATED"),
        ("alice", "globex", QUESTION, {}, PermissionDeniedError, "PERMISSION_DENIED"),
        ("alice", None, "", {}, InvalidArgumentError, ""),
        ("alice", None, "x" * 5000, {}, InvalidArgumentError, ""),
        ("alice", None, "hi <|im_end|> there", {"route": ROUTE}, InvalidArgumentError, ""),
        ("alice", None, QUESTION, {"colour": "blue"}, InvalidArgumentError, ""),
        ("alice", None, QUESTION, {"route": "no-such-route"}, InvalidArgumentError, ""),
    ],
    ids=[
        "no-token",
        "forged-token",
        "other-tenant",
        "empty",
        "oversized",
        "special-tokens",
        "unknown-hint",
        "unknown-route",
    ],
)
async def test_bad_input_gets_a_clear_status_and_the_router_keeps_serving(
    platform: Platform,
    token: str,
    tenant: str | None,
    query: str,
    metadata: dict[str, str],
    error: type[CagClientError],
    reason: str,
) -> None:
    tokens = {"none": "", "forged": platform.user_token()[:-4] + "AAAA", "alice": platform.user_token()}
    async with AsyncCagClient(platform.router_address, tokens[token]) as cag:
        with pytest.raises(error) as caught:
            await cag.ask(query, tenant=tenant, metadata=metadata, sampling=GREEDY)
    assert caught.value.code != grpc.StatusCode.INTERNAL
    assert not reason or caught.value.reason == reason
    assert "billing-" not in caught.value.message  # no module is ever named to a refused caller
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        assert (await cag.ask(QUESTION, sampling=GREEDY)).summary.path == "module"


async def test_the_router_serves_from_its_snapshot_while_the_registry_is_down(platform: Platform) -> None:
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        await cag.ask(QUESTION, sampling=GREEDY)  # the route is in the snapshot, its modules resident
        await platform.registry.server.stop(grace=None)
        decision = await cag.explain(QUESTION)
        answer = await cag.ask(QUESTION, sampling=GREEDY)
    assert decision.path == "module" and decision.route == ROUTE
    assert answer.summary.path == "module"


async def test_a_blocking_client_starts_the_trace_the_services_continue(
    platform: Platform, spans: InMemorySpanExporter
) -> None:
    spans.clear()

    def ask() -> str:
        with CagClient(platform.router_address, platform.user_token()) as cag:
            return cag.ask(QUESTION, sampling=GREEDY).summary.trace_id

    trace_id = await asyncio.to_thread(ask)
    mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    [client] = [s for s in mine if s.name == "cag.v1.RouterService/Generate" and s.kind.name == "CLIENT"]
    [router] = [s for s in mine if s.name == "/cag.v1.RouterService/Generate"]
    assert client.parent is None and router.parent is not None and router.parent.span_id == client.context.span_id
