"""The fallback's integration fixtures: all-MiniLM-L6-v2 once per session, a fresh database, the candidate store,
served-fallback events, and a fallback gRPC server whose promotion is never asked to approve."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cag.auth.tokens import load_key
from cag.embedding import MiniLMEmbedder
from cag.events.schemas import Envelope, FallbackServedV1
from cag.fallback.answering import Answerer
from cag.fallback.approval import Approver, CompileTarget
from cag.fallback.candidate_store import CandidateStore
from cag.fallback.core.candidates import ClusteringPolicy
from cag.fallback.core.chunking import ChunkLimits
from cag.fallback.core.evidence_order import RetrievalOrder
from cag.fallback.index import ChunkIndex
from cag.fallback.indexing import Indexer
from cag.fallback.promotion import Promotion
from cag.fallback.promotion_rpc import PromotionRpcs
from cag.fallback.servicer import SERVICE_NAME, FallbackServicer
from cag.infra.ports import free_port
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.clients.compiler import AsyncCompilerClient
from cag.rpc.server import build_server
from cag.v1 import fallback_pb2_grpc
from tests.infra_fixtures import FreshDatabase, Infra

# Looser than the service's default similarity: paraphrases of one question by MiniLM score about 0.7 to 0.9.
PROMOTION_POLICY = ClusteringPolicy(similarity=0.7, evidence_overlap=0.5, propose_at=3)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
REFUND_QUERIES = ["How long does a refund take?", "how long do refunds take", "When is my refund paid back?"]


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder.load()


@pytest.fixture
async def database(fresh_database: FreshDatabase) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(fresh_database.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def candidate_store(database: AsyncEngine) -> CandidateStore:
    store = CandidateStore(database, PROMOTION_POLICY)
    await store.create_tables()
    await store.create_tables()  # idempotent
    return store


@dataclass
class Bus:
    published: list[Envelope]

    async def publish(self, envelope: Envelope) -> None:
        self.published.append(envelope)


def idle_approver(database: AsyncEngine) -> Approver:
    """An approver whose compiler and registry are never dialled: no approval in these tests gets that far."""
    return Approver(
        database,
        AsyncCompilerClient("127.0.0.1:9", token="unused"),
        AsyncRegistryClient("127.0.0.1:9", token="unused"),
        CompileTarget(model="tiny", layout_file=Path("unused.json"), promotions_dir=Path("unused")),
    )


def promotion_of(store: CandidateStore, database: AsyncEngine, embedder: MiniLMEmbedder, bus: Bus) -> Promotion:
    return Promotion(store, embedder, bus.publish, idle_approver(database))


def served(
    query: str, *, tenant: str = "acme", evidence: tuple[str, ...] = ("c-refunds",), minute: int = 0
) -> Envelope:
    payload = FallbackServedV1(
        request_id=f"r-{uuid.uuid4().hex[:8]}",
        tenant_id=tenant,
        query=query,
        reason="no route matched",
        evidence_ids=list(evidence),
        answer="Refunds are paid back within 14 days.",
        latency_s=0.5,
    )
    return Envelope.wrap(payload).model_copy(update={"occurred_at": T0 + timedelta(minutes=minute)})


async def count(promotion: Promotion, envelope: Envelope) -> None:
    await promotion.served(envelope, FallbackServedV1.model_validate(envelope.data))


async def count_served(promotion: Promotion, queries: Sequence[str], evidence: str, tenant: str = "acme") -> None:
    for minute, query in enumerate(queries):
        await count(promotion, served(query, tenant=tenant, evidence=(evidence,), minute=minute))


@pytest.fixture
async def promotion_server(
    infra: Infra, candidate_store: CandidateStore, database: AsyncEngine, minilm: MiniLMEmbedder
) -> AsyncIterator[tuple[str, Promotion]]:
    """A fallback gRPC server (its answerer never asked) with promotion; (address, promotion)."""
    promotion = promotion_of(candidate_store, database, minilm, Bus(published=[]))
    index = ChunkIndex(database)
    answerer = Answerer(index, minilm, RetrievalOrder(), pool=None, broker=None, layout_json="{}", top_k=3)  # type: ignore[arg-type]
    indexer = Indexer(index, minilm, ChunkLimits(), None)
    servicer = FallbackServicer(answerer, indexer, PromotionRpcs(promotion), router_subject="service:router")
    address = f"127.0.0.1:{free_port()}"
    server = await build_server(
        [(fallback_pb2_grpc.add_FallbackServiceServicer_to_server, servicer)],
        [SERVICE_NAME],
        address,
        auth=load_key(infra.auth_key_file),
    )
    await server.start()
    try:
        yield address, promotion
    finally:
        await server.stop(grace=None)
