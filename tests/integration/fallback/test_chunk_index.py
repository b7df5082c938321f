"""The chunk index on real Postgres with pgvector and the real MiniLM model: retrieval by meaning, the reader's
audience inside the query, clear statuses for an empty index, and a source replaced in one transaction."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cag.acl import AclScope
from cag.embedding import MiniLMEmbedder
from cag.errors import EmbeddingUnavailableError, NoEvidenceError
from cag.fallback.answering import Answerer
from cag.fallback.core.audience import Reader
from cag.fallback.core.chunking import ChunkLimits, SourceDocument
from cag.fallback.core.evidence_order import RetrievalOrder
from cag.fallback.index import Audience, ChunkIndex
from cag.fallback.indexing import Indexer, documents_checksum
from tests.infra_fixtures import FreshDatabase

ACME_DOCS = [
    SourceDocument(path="refunds.md", title="Refunds", text="# Refunds\n\nRefunds are paid back within 14 days."),
    SourceDocument(path="shipping.md", title="Shipping", text="# Shipping\n\nParcels ship from Rotterdam by truck."),
]
GLOBEX_DOCS = [
    SourceDocument(path="refunds.md", title="Refunds", text="# Refunds\n\nGlobex refunds take 90 days by cheque."),
]


@pytest.fixture
async def index(database: AsyncEngine) -> ChunkIndex:
    chunks = ChunkIndex(database)
    await chunks.create_tables()
    await chunks.create_tables()  # idempotent
    return chunks


def answerer(index: ChunkIndex, embedder: object) -> Answerer:
    return Answerer(index, embedder, RetrievalOrder(), pool=None, broker=None, layout_json="{}", top_k=3)  # type: ignore[arg-type]


async def put(indexer: Indexer, uri: str, audience: Audience, docs: list[SourceDocument]) -> None:
    await indexer.index_documents(uri, audience, docs, documents_checksum(docs))


@pytest.fixture
async def indexed(index: ChunkIndex, minilm: MiniLMEmbedder) -> Indexer:
    indexer = Indexer(index, minilm, ChunkLimits(), None)
    await put(indexer, "file:///kb/acme", Audience(tenant_id="acme", scope=AclScope.TENANT), ACME_DOCS)
    await put(indexer, "file:///kb/globex", Audience(tenant_id="globex", scope=AclScope.TENANT), GLOBEX_DOCS)
    sales = [SourceDocument(path="quota.md", title="Quota", text="The sales refund quota is 3 per month.")]
    await put(
        indexer, "file:///kb/acme-sales", Audience(tenant_id="acme", scope=AclScope.WORKSPACE, principal="sales"), sales
    )
    return indexer


async def test_the_nearest_chunk_by_meaning_comes_first_with_its_place(
    indexed: Indexer, minilm: MiniLMEmbedder
) -> None:
    evidence = await answerer(indexed.index, minilm).evidence(
        Reader(tenant_id="acme"), "How long until I get my money back?"
    )
    first = evidence[0].chunk
    assert (first.source_uri, first.path) == ("file:///kb/acme", "refunds.md")
    assert ACME_DOCS[0].text[first.start : first.end] == first.text


async def test_another_tenants_chunks_are_never_retrieved(indexed: Indexer, minilm: MiniLMEmbedder) -> None:
    reader = Reader(tenant_id="acme")
    evidence = await answerer(indexed.index, minilm).evidence(reader, "Globex refunds by cheque after 90 days")
    assert evidence and all(r.chunk.source_uri == "file:///kb/acme" for r in evidence)
    for_globex = await answerer(indexed.index, minilm).evidence(Reader(tenant_id="globex"), "shipping from Rotterdam")
    assert {r.chunk.source_uri for r in for_globex} == {"file:///kb/globex"}


async def test_workspace_chunks_only_for_that_workspace(indexed: Indexer, minilm: MiniLMEmbedder) -> None:
    query = "sales refund quota"
    [vector] = minilm.embed([query])
    inside = await indexed.index.nearest(Reader(tenant_id="acme", workspace="sales"), vector, 10)
    outside = await indexed.index.nearest(Reader(tenant_id="acme", workspace="ops"), vector, 10)
    assert "file:///kb/acme-sales" in {r.chunk.source_uri for r in inside}
    assert "file:///kb/acme-sales" not in {r.chunk.source_uri for r in outside}


async def test_an_empty_index_and_a_tenant_without_sources_are_no_evidence(
    index: ChunkIndex, indexed: Indexer, minilm: MiniLMEmbedder
) -> None:
    with pytest.raises(NoEvidenceError, match="initech"):
        await answerer(index, minilm).evidence(Reader(tenant_id="initech"), "refunds?")


async def test_an_embedding_failure_is_unavailable_saying_so(index: ChunkIndex) -> None:
    class Broken:
        def embed(self, texts: object) -> list[list[float]]:
            raise RuntimeError("model file unreadable")

    with pytest.raises(EmbeddingUnavailableError, match="model file unreadable"):
        await answerer(index, Broken()).evidence(Reader(tenant_id="acme"), "refunds?")


async def test_a_source_is_replaced_in_one_transaction(indexed: Indexer, minilm: MiniLMEmbedder) -> None:
    """Readers polling while the source is replaced see the old chunks or the new ones, never none or both."""
    uri, reader = "file:///kb/acme", Reader(tenant_id="acme")
    [vector] = minilm.embed(["refunds"])
    new_docs = [SourceDocument(path="refunds.md", title="Refunds", text="# Refunds\n\nRefunds now take 30 days.")]

    async def sources_seen() -> set[frozenset[str]]:
        seen = set()
        for _ in range(200):
            rows = await indexed.index.nearest(reader, vector, 10)
            seen.add(frozenset(r.chunk.path for r in rows if r.chunk.source_uri == uri))
            if any("30 days" in r.chunk.text for r in rows):
                break
        return seen

    polling = asyncio.create_task(sources_seen())
    await put(indexed, uri, Audience(tenant_id="acme", scope=AclScope.TENANT), new_docs)
    seen = await polling
    assert seen <= {frozenset({"refunds.md", "shipping.md"}), frozenset({"refunds.md"})}
    rows = await indexed.index.nearest(reader, vector, 10)
    texts = [r.chunk.text for r in rows if r.chunk.source_uri == uri]
    assert texts == ["# Refunds\n\nRefunds now take 30 days."]


async def test_a_tenant_with_few_chunks_among_many_of_another_still_gets_its_own_through_the_hnsw_index(
    index: ChunkIndex, database: AsyncEngine, fresh_database: FreshDatabase, minilm: MiniLMEmbedder
) -> None:
    """With the planner made to use the HNSW index, the nearest 40 candidates are all another tenant's: the
    reader's own chunk is still found (the scan goes on until rows pass the audience filter)."""
    indexer = Indexer(index, minilm, ChunkLimits(), None)
    crowd = [
        SourceDocument(path=f"refunds-{i}.md", title="Refunds", text=f"Refunds of order {i} take {i} days.")
        for i in range(150)
    ]
    await put(indexer, "file:///kb/globex", Audience(tenant_id="globex", scope=AclScope.TENANT), crowd)
    lone = [SourceDocument(path="stores.md", title="Stores", text="Our Paris store opens at nine.")]
    await put(indexer, "file:///kb/acme", Audience(tenant_id="acme", scope=AclScope.TENANT), lone)
    async with database.begin() as conn:  # only the HNSW index left to the planner
        await conn.execute(text("DROP INDEX fallback_chunks_source"))
        await conn.execute(text(f'ALTER DATABASE "{fresh_database.name}" SET enable_seqscan = off'))
    await database.dispose()  # new connections take the setting
    [vector] = minilm.embed(["How long do refunds of an order take?"])
    async with database.connect() as conn:
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                text(
                    "EXPLAIN SELECT chunk_id FROM fallback_chunks WHERE tenant_id = 'acme' "
                    "ORDER BY embedding <=> CAST(:q AS vector) LIMIT 3"
                ),
                {"q": "[" + ",".join(map(str, vector)) + "]"},
            )
        )
    assert "fallback_chunks_embedding" in plan  # the HNSW index answers
    found = await index.nearest(Reader(tenant_id="acme"), vector, 3)
    assert [r.chunk.path for r in found] == ["stores.md"]
