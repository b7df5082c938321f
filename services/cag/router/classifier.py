"""The classifier step of the order of decision: MiniLM (all-MiniLM-L6-v2, loaded by `cag.embedding`) embeds
the query and each route's description; the score is their cosine similarity, clipped to [0, 1].

Importing this module is cheap; `MiniLMClassifier.load()` imports torch and sentence-transformers (seconds),
and the app calls it only when the classifier is enabled in the settings."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from cag.embedding import load_minilm
from cag.router.core import RouteInfo

# Descriptions whose embeddings are kept (each 384 floats): more than every tenant's routes of a large platform.
MAX_CACHED_DESCRIPTIONS = 20_000


class MiniLMClassifier:
    """`model`: a sentence-transformers model (anything with `encode(texts, normalize_embeddings=True)`)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()  # decisions run on worker threads
        self._descriptions: OrderedDict[str, Any] = OrderedDict()  # description → unit embedding [384]

    @classmethod
    def load(cls) -> MiniLMClassifier:
        return cls(load_minilm())

    def scores(self, query: str, routes: Sequence[RouteInfo]) -> Sequence[tuple[str, float]]:
        described = [r for r in routes if r.description]
        if not described:
            return []
        vectors = self._embeddings([r.description for r in described])  # [routes, 384]
        q = self._model.encode([query], normalize_embeddings=True)[0]  # [384], unit length
        similarities = vectors @ q  # [routes]: cosine similarity of unit vectors
        return [(r.route, min(max(float(s), 0.0), 1.0)) for r, s in zip(described, similarities, strict=True)]

    def _embeddings(self, descriptions: list[str]) -> Any:
        import numpy as np

        with self._lock:
            missing = [d for d in dict.fromkeys(descriptions) if d not in self._descriptions]
        if missing:
            encoded = self._model.encode(missing, normalize_embeddings=True)  # [missing, 384]
            with self._lock:
                for description, vector in zip(missing, encoded, strict=True):
                    self._descriptions[description] = vector
                while len(self._descriptions) > MAX_CACHED_DESCRIPTIONS:
                    self._descriptions.popitem(last=False)
        with self._lock:
            rows = []
            for d in descriptions:
                vector = self._descriptions.get(d)
                if vector is None:  # evicted by a concurrent fill: compute it again
                    vector = self._model.encode([d], normalize_embeddings=True)[0]
                self._descriptions[d] = vector
                self._descriptions.move_to_end(d)
                rows.append(vector)
        return np.stack(rows)
