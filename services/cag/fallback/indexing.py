"""Sources into the index: documents chunked, embedded in batches, and the source's chunks replaced in one
transaction. A source named by URI (file:// or s3://) is read as the compiler reads it, so its checksum is the
one its modules carry."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cag.canonical import load_source
from cag.canonical.checksum import source_checksum
from cag.fallback.core.chunking import ChunkLimits, SourceDocument, chunk_document
from cag.fallback.embedder import Embeds, embed
from cag.fallback.index import Audience, ChunkIndex
from cag.objectstore import ObjectStore
from cag.objectstore.sources import readable_source


@dataclass(frozen=True, kw_only=True)
class Indexed:
    documents: int
    chunks: int
    checksum: str
    changed: bool  # False: the event was applied before, nothing was written


def documents_checksum(documents: Sequence[SourceDocument]) -> str:
    """sha256 over the documents' paths, titles and texts (for documents given directly, not read from a URI)."""
    digest = hashlib.sha256()
    for d in sorted(documents, key=lambda d: d.path):
        for part in (d.path, d.title, d.text):
            digest.update(part.encode())
            digest.update(b"\x00")
    return digest.hexdigest()


def read_source(uri: str, store: ObjectStore | None) -> tuple[list[SourceDocument], str]:
    """The source's documents (each tool schema one document under tools/) and its canonical checksum."""
    with readable_source(uri, store) as root:
        bundle = load_source(Path(root))
    documents = [SourceDocument(path=d.path, title=d.title, text=d.body) for d in bundle.documents]
    documents += [SourceDocument(path=f"tools/{t.name}.json", title=t.name, text=t.text) for t in bundle.tools]
    return documents, source_checksum(bundle)


class Indexer:
    def __init__(self, index: ChunkIndex, embedder: Embeds, limits: ChunkLimits, store: ObjectStore | None) -> None:
        self.index, self.embedder, self.limits, self.store = index, embedder, limits, store

    async def index_documents(
        self,
        source_uri: str,
        audience: Audience,
        documents: Sequence[SourceDocument],
        checksum: str,
        *,
        event_id: str | None = None,
    ) -> Indexed:
        tenant_id = audience.tenant_id
        chunks = [c for d in documents for c in chunk_document(tenant_id, source_uri, d, self.limits)]
        vectors = await embed(self.embedder, [f"{c.heading}\n{c.text}" for c in chunks])
        changed = await self.index.replace_source(
            tenant_id, source_uri, checksum, audience, chunks, vectors, event_id=event_id
        )
        return Indexed(documents=len(documents), chunks=len(chunks), checksum=checksum, changed=changed)

    async def index_uri(self, source_uri: str, audience: Audience, *, event_id: str | None = None) -> Indexed:
        """Read the source at `source_uri` and replace its chunks; unchanged sources (same checksum) are skipped."""
        documents, checksum = await asyncio.to_thread(read_source, source_uri, self.store)
        if event_id is None and await self.index.source_checksum(audience.tenant_id, source_uri) == checksum:
            return Indexed(documents=len(documents), chunks=0, checksum=checksum, changed=False)
        return await self.index_documents(source_uri, audience, documents, checksum, event_id=event_id)
