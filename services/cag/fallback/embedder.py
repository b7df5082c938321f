"""The embedding model as the fallback uses it: off the event loop, and any failure of it a clear UNAVAILABLE."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from cag.errors import EmbeddingUnavailableError


class Embeds(Protocol):
    """cag.embedding.MiniLMEmbedder, or a double in unit tests."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


async def embed(embedder: Embeds, texts: Sequence[str]) -> list[list[float]]:
    """Embeddings computed on a worker thread; any failure of the model is EMBEDDING_UNAVAILABLE."""
    try:
        return await asyncio.to_thread(embedder.embed, texts)
    except Exception as e:
        raise EmbeddingUnavailableError(f"the embedding model failed: {type(e).__name__}: {e}") from e
