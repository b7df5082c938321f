"""The embedding model's failures become EMBEDDING_UNAVAILABLE, saying what failed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cag.errors import EmbeddingUnavailableError, Status
from cag.fallback.embedder import embed


class Failing:
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError("CUDA out of memory")


class Echoing:
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(len(t))] for t in texts]


async def test_a_failing_embedder_is_unavailable_naming_the_failure() -> None:
    with pytest.raises(EmbeddingUnavailableError, match="CUDA out of memory") as caught:
        await embed(Failing(), ["refunds?"])
    assert (caught.value.status, caught.value.reason) == (Status.UNAVAILABLE, "EMBEDDING_UNAVAILABLE")


async def test_a_working_embedder_answers_in_order() -> None:
    assert await embed(Echoing(), ["a", "bbb"]) == [[1.0], [3.0]]
