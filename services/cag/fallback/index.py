"""The chunk index in the registry's Postgres (pgvector), tables of the fallback's own, created when missing.

One row per chunk with its 384-dimension embedding, an HNSW index on cosine distance, and the chunk's audience
(tenant, ACL scope and principal). Retrieval is one query whose WHERE clause holds the reader's audience
(`cag.fallback.core.audience`), so another tenant's chunk is never even ranked. A source is replaced in one
transaction: a concurrent reader sees its old chunks or its new ones, never neither, never both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cag.acl import AclScope
from cag.embedding import DIMENSIONS
from cag.fallback.core.audience import Reader, readable_by
from cag.fallback.core.chunking import Chunk

_CREATE = (
    f"""CREATE TABLE IF NOT EXISTS fallback_chunks (
        chunk_id varchar(64) PRIMARY KEY,
        tenant_id varchar(128) NOT NULL,
        source_uri text NOT NULL,
        source_checksum varchar(64) NOT NULL,
        path text NOT NULL,
        char_start integer NOT NULL,
        char_end integer NOT NULL,
        heading text NOT NULL,
        body text NOT NULL,
        acl_scope varchar(16) NOT NULL,
        acl_principal varchar(128) NOT NULL,
        embedding vector({DIMENSIONS}) NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS fallback_chunks_source ON fallback_chunks (tenant_id, source_uri)",
    "CREATE INDEX IF NOT EXISTS fallback_chunks_embedding ON fallback_chunks USING hnsw (embedding vector_cosine_ops)",
    # Source events applied (delivery is at least once): an event id seen before is skipped.
    """CREATE TABLE IF NOT EXISTS fallback_processed_events (
        event_id varchar(256) PRIMARY KEY,
        processed_at timestamptz NOT NULL DEFAULT now()
    )""",
)
_INSERT = text(
    "INSERT INTO fallback_chunks (chunk_id, tenant_id, source_uri, source_checksum, path, char_start, char_end, "
    "heading, body, acl_scope, acl_principal, embedding) VALUES (:chunk_id, :tenant_id, :source_uri, "
    ":source_checksum, :path, :char_start, :char_end, :heading, :body, :acl_scope, :acl_principal, "
    "CAST(:embedding AS vector))"
)
_DELETE = text("DELETE FROM fallback_chunks WHERE tenant_id = :tenant_id AND source_uri = :source_uri")


@dataclass(frozen=True, kw_only=True)
class Audience:
    """Who may retrieve a source's chunks (its modules' ACL)."""

    tenant_id: str  # "public" for PUBLIC
    scope: AclScope
    principal: str = ""  # workspace or user id for those scopes


@dataclass(frozen=True, kw_only=True)
class Retrieved:
    chunk: Chunk
    distance: float  # cosine distance to the query, 0 (same direction) to 2


def _vector(values: Sequence[float]) -> str:
    """pgvector's text form, cast to `vector` by the query."""
    return "[" + ",".join(f"{v:.7g}" for v in values) + "]"


class ChunkIndex:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create_tables(self) -> None:
        """Idempotent: the tables and indexes are created when missing (the `vector` extension must exist)."""
        async with self._engine.begin() as conn:
            for statement in _CREATE:
                await conn.execute(text(statement))

    async def replace_source(
        self,
        tenant_id: str,
        source_uri: str,
        checksum: str,
        audience: Audience,
        chunks: Sequence[Chunk],
        embeddings: Sequence[Sequence[float]],
        *,
        event_id: str | None = None,
    ) -> bool:
        """The source's chunks replaced by `chunks` in one transaction. With `event_id`: False (nothing changed)
        when that event was applied before."""
        async with self._engine.begin() as conn:
            if event_id is not None and not await _first_time(conn, event_id):
                return False
            await conn.execute(_DELETE, {"tenant_id": tenant_id, "source_uri": source_uri})
            rows = [
                {
                    "chunk_id": c.chunk_id,
                    "tenant_id": tenant_id,
                    "source_uri": source_uri,
                    "source_checksum": checksum,
                    "path": c.path,
                    "char_start": c.start,
                    "char_end": c.end,
                    "heading": c.heading,
                    "body": c.text,
                    "acl_scope": audience.scope.value,
                    "acl_principal": audience.principal,
                    "embedding": _vector(e),
                }
                for c, e in zip(chunks, embeddings, strict=True)
            ]
            if rows:
                await conn.execute(_INSERT, rows)
        return True

    async def source_checksum(self, tenant_id: str, source_uri: str) -> str | None:
        """The checksum the source was last indexed at; None when it has no chunks."""
        query = text("SELECT source_checksum FROM fallback_chunks WHERE tenant_id = :t AND source_uri = :s LIMIT 1")
        async with self._engine.connect() as conn:
            return (await conn.execute(query, {"t": tenant_id, "s": source_uri})).scalar_one_or_none()

    async def audience_of(self, tenant_id: str, source_uri: str) -> Audience | None:
        """The audience the source was last indexed for; None when it has no chunks."""
        query = text(
            "SELECT acl_scope, acl_principal FROM fallback_chunks WHERE tenant_id = :t AND source_uri = :s LIMIT 1"
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query, {"t": tenant_id, "s": source_uri})).first()
        return None if row is None else Audience(tenant_id=tenant_id, scope=AclScope(row[0]), principal=row[1])

    async def nearest(self, reader: Reader, query_embedding: Sequence[float], k: int) -> list[Retrieved]:
        """The `k` chunks `reader` may read nearest to the query, nearest first (the filter is in the query)."""
        condition = readable_by(reader)
        query = text(
            "SELECT chunk_id, source_uri, path, char_start, char_end, heading, body, "
            "embedding <=> CAST(:query AS vector) AS distance FROM fallback_chunks "
            f"WHERE {condition.sql} ORDER BY distance LIMIT :k"
        )
        params = {**condition.params, "query": _vector(query_embedding), "k": k}
        async with self._engine.begin() as conn:
            # An HNSW scan filters after it finds neighbours: a tenant with few chunks among many of others' would
            # get fewer than k (or none). Iterative scans go on until k rows pass the filter, nearest first.
            await conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            rows = (await conn.execute(query, params)).all()
        return [
            Retrieved(
                chunk=Chunk(
                    chunk_id=r.chunk_id,
                    source_uri=r.source_uri,
                    path=r.path,
                    start=r.char_start,
                    end=r.char_end,
                    heading=r.heading,
                    text=r.body,
                ),
                distance=float(r.distance),
            )
            for r in rows
        ]


async def _first_time(conn: AsyncConnection, event_id: str) -> bool:
    inserted = await conn.execute(
        text("INSERT INTO fallback_processed_events (event_id) VALUES (:e) ON CONFLICT DO NOTHING"), {"e": event_id}
    )
    return bool(inserted.rowcount)
