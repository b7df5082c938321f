"""Promotion on real Postgres, NATS and all-MiniLM-L6-v2: served fallbacks clustered into candidates, counted
once per event id, proposed on the bus, reviewed once; approval refused for evidence that is gone or private."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import timedelta
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from cag.acl import AclScope
from cag.embedding import MiniLMEmbedder
from cag.errors import UnavailableError
from cag.events.bus import make_broker, publish_event
from cag.events.consumer import Redelivery, start_broker, subscribe
from cag.events.schemas import STREAM, CandidateProposedV1, Envelope, FallbackServedV1
from cag.fallback.approval import Approver, CompileTarget, PromotionRefusedError
from cag.fallback.candidate_store import CandidateStore
from cag.fallback.core.audience import Reader
from cag.fallback.core.candidates import CandidateNotReviewableError, CandidateState
from cag.fallback.core.chunking import ChunkLimits, SourceDocument
from cag.fallback.index import Audience, ChunkIndex
from cag.fallback.indexing import Indexer, documents_checksum
from cag.fallback.promotion import Promotion, ReviewOrder
from cag.fallback.promotion_handlers import served_consumer
from cag.lifecycle import bounded
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.clients.compiler import AsyncCompilerClient
from tests.infra_fixtures import Infra
from tests.integration.fallback.conftest import REFUND_QUERIES, T0, Bus, count, idle_approver, promotion_of, served

FAST = Redelivery(max_deliver=3, backoff_s=(0.2, 0.4), ack_wait_s=5.0)


async def test_paraphrased_fallbacks_form_one_candidate_proposed_at_the_threshold(
    candidate_store: CandidateStore, database: AsyncEngine, minilm: MiniLMEmbedder
) -> None:
    bus = Bus(published=[])
    promotion = promotion_of(candidate_store, database, minilm, bus)
    for minute, query in enumerate(REFUND_QUERIES):
        await count(promotion, served(query, minute=minute))
    await count(promotion, served("Which carrier ships to Norway?", evidence=("c-shipping",), minute=5))

    page = await candidate_store.page(tenants=None, state=None, offset=0, limit=10)
    [candidate] = page.candidates  # the shipping question is still gathering: not listed
    assert (candidate.state, candidate.count) == (CandidateState.PROPOSED, 3)
    assert candidate.evidence_ids == ("c-refunds",)
    assert (candidate.first_seen, candidate.last_seen) == (T0, T0 + timedelta(minutes=2))
    assert sorted(candidate.representative_queries(5)) == sorted(REFUND_QUERIES)
    [proposal] = bus.published
    assert proposal.subject == CandidateProposedV1.subject
    assert proposal.data["candidate_id"] == candidate.candidate_id and proposal.data["count"] == 3


async def test_a_served_event_is_counted_once_per_event_id(
    candidate_store: CandidateStore, database: AsyncEngine, minilm: MiniLMEmbedder
) -> None:
    promotion = promotion_of(candidate_store, database, minilm, Bus(published=[]))
    event = served(REFUND_QUERIES[0])
    first = await promotion.served(event, FallbackServedV1.model_validate(event.data))
    again = await promotion.served(event, FallbackServedV1.model_validate(event.data))
    assert first is not None and again is not None
    assert (first.duplicate, again.duplicate) == (False, True)
    stored = await candidate_store.get(first.candidate.candidate_id)
    assert stored is not None and stored.count == 1


async def test_a_second_review_is_refused_and_the_first_is_kept(
    candidate_store: CandidateStore, database: AsyncEngine, minilm: MiniLMEmbedder
) -> None:
    promotion = promotion_of(candidate_store, database, minilm, Bus(published=[]))
    for minute, query in enumerate(REFUND_QUERIES):
        await count(promotion, served(query, minute=minute))
    [candidate] = (await candidate_store.page(tenants={"acme"}, state=None, offset=0, limit=10)).candidates
    order = ReviewOrder(
        candidate_id=candidate.candidate_id, approve=False, reviewer="alice", actor="user:alice", route="", comment="no"
    )
    rejected = await promotion.review(order)
    assert rejected.state is CandidateState.REJECTED
    with pytest.raises(CandidateNotReviewableError, match="already reviewed"):
        await promotion.review(dataclasses.replace(order, approve=True, route="refunds"))
    stored = await candidate_store.get(candidate.candidate_id)
    assert stored is not None and stored.state is CandidateState.REJECTED
    assert stored.review is not None and (stored.review.reviewer, stored.review.actor) == ("alice", "user:alice")


async def test_served_events_on_nats_are_counted_once_and_the_proposal_is_published(
    infra: Infra, candidate_store: CandidateStore, database: AsyncEngine, minilm: MiniLMEmbedder
) -> None:
    broker = make_broker(infra.nats_url)

    async def publish(envelope: Envelope) -> None:
        await publish_event(broker, envelope)

    promotion = Promotion(candidate_store, minilm, publish, idle_approver(database))
    consumer = served_consumer(promotion, f"t-{uuid.uuid4().hex[:8]}", FAST)
    subscribe(broker, dataclasses.replace(consumer, deliver_policy=DeliverPolicy.NEW))  # only this test's events
    await start_broker(broker)
    client = await nats.connect(infra.nats_url)
    proposals = await client.jetstream().pull_subscribe(
        CandidateProposedV1.subject, durable=f"t-proposals-{uuid.uuid4().hex[:8]}", stream=STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
    )  # fmt: skip
    tenant = f"t{uuid.uuid4().hex[:8]}"
    try:
        first = served(REFUND_QUERIES[0], tenant=tenant)
        await publish_event(broker, first)
        # The same event again under another message id: JetStream lets it through, the consumer must not count it.
        await broker.publish(
            first.model_dump_json().encode(), first.subject, headers={"Nats-Msg-Id": "x" + first.event_id}
        )
        for minute, query in enumerate(REFUND_QUERIES[1:], start=1):
            await publish_event(broker, served(query, tenant=tenant, minute=minute))
        [message] = await proposals.fetch(1, timeout=60)
        proposal = CandidateProposedV1.model_validate(Envelope.model_validate_json(message.data).data)
        # Counted twice, the first event would have tipped the cluster over before the third query was seen.
        assert (proposal.tenant_id, proposal.count) == (tenant, 3)
        assert sorted(proposal.queries) == sorted(REFUND_QUERIES)
        stored = await candidate_store.get(proposal.candidate_id)
        assert stored is not None and stored.count == 3 and stored.state is CandidateState.PROPOSED
    finally:
        await bounded(broker.stop(), "broker")
        await bounded(client.close(), "test client")


async def test_approval_is_refused_for_private_or_vanished_evidence(
    candidate_store: CandidateStore, database: AsyncEngine, minilm: MiniLMEmbedder
) -> None:
    index = ChunkIndex(database)
    await index.create_tables()
    indexer = Indexer(index, minilm, ChunkLimits(), None)
    docs = [SourceDocument(path="quota.md", title="Quota", text="The sales refund quota is 3 per month.")]
    sales = Audience(tenant_id="acme", scope=AclScope.WORKSPACE, principal="sales")
    await indexer.index_documents("file:///kb/sales", sales, docs, documents_checksum(docs))
    [retrieved] = await index.nearest(Reader(tenant_id="acme", workspace="sales"), minilm.embed(["refund quota"])[0], 1)
    approver = idle_approver(database)
    promotion = Promotion(candidate_store, minilm, Bus(published=[]).publish, approver)
    for minute, query in enumerate(["sales refund quota?", "what is the sales refund quota", "refund quota for sales"]):
        await count(promotion, served(query, evidence=(retrieved.chunk.chunk_id,), minute=minute))
    [private] = (await candidate_store.page(tenants={"acme"}, state=None, offset=0, limit=10)).candidates
    with pytest.raises(PromotionRefusedError, match="may only be read by workspace 'sales'"):
        await approver.evidence(private)
    for minute, query in enumerate(REFUND_QUERIES):
        await count(promotion, served(query, evidence=("c-gone",), minute=minute))
    listed = (await candidate_store.page(tenants={"acme"}, state=None, offset=0, limit=10)).candidates
    [gone] = [c for c in listed if c.evidence_ids == ("c-gone",)]
    with pytest.raises(PromotionRefusedError, match="is indexed any more"):
        await approver.evidence(gone)
    order = ReviewOrder(
        candidate_id=gone.candidate_id, approve=True, reviewer="", actor="user:alice", route="refunds", comment=""
    )
    with pytest.raises(PromotionRefusedError):
        await promotion.review(order)
    stored = await candidate_store.get(gone.candidate_id)
    assert stored is not None and stored.state is CandidateState.PROPOSED  # a failed approval leaves it proposed


async def test_approval_needs_a_golden_fact_and_a_compiler_that_answers(
    candidate_store: CandidateStore, database: AsyncEngine, minilm: MiniLMEmbedder, tmp_path: Path
) -> None:
    index = ChunkIndex(database)
    await index.create_tables()
    docs = [SourceDocument(path="refunds.md", title="Refunds", text="# Refunds\n\nMoney returns in two weeks.")]
    tenant = Audience(tenant_id="acme", scope=AclScope.TENANT)
    await Indexer(index, minilm, ChunkLimits(), None).index_documents(
        "file:///kb/r", tenant, docs, documents_checksum(docs)
    )
    [retrieved] = await index.nearest(Reader(tenant_id="acme"), minilm.embed(["refund"])[0], 1)
    down = "127.0.0.1:1"  # nothing listens on port 1
    approver = Approver(
        database,
        AsyncCompilerClient(down, token="t", timeout_s=5.0),
        AsyncRegistryClient(down, token="t", timeout_s=5.0),
        CompileTarget(model="tiny", layout_file=tmp_path / "layout.json", promotions_dir=tmp_path / "promotions"),
    )
    promotion = Promotion(candidate_store, minilm, Bus(published=[]).publish, approver)
    for minute, query in enumerate(REFUND_QUERIES):  # answered "Refunds are paid back within 14 days."
        await count(promotion, served(query, evidence=(retrieved.chunk.chunk_id,), minute=minute))
    [candidate] = (await candidate_store.page(tenants={"acme"}, state=None, offset=0, limit=10)).candidates
    order = ReviewOrder(
        candidate_id=candidate.candidate_id, approve=True, reviewer="", actor="user:alice", route="refunds", comment=""
    )
    with pytest.raises(PromotionRefusedError, match="share no fact with their evidence"):
        await promotion.review(order)
    with pytest.raises(UnavailableError, match=f"the compiler at {down} refused the promotion: UNAVAILABLE"):
        await promotion.review(dataclasses.replace(order, expect=("two weeks",)))
    stored = await candidate_store.get(candidate.candidate_id)
    assert stored is not None and stored.state is CandidateState.PROPOSED
    folder = tmp_path / "promotions" / "acme" / candidate.candidate_id
    assert (
        folder / "01-refunds.md"
    ).read_text() == "---\ntitle: Refunds > Refunds\n---\n# Refunds\n\nMoney returns in two weeks.\n"
    golden = json.loads((folder / "golden.json").read_text())
    assert golden == [{"question": q, "expect": ["two weeks"]} for q in stored.representative_queries(5)]
