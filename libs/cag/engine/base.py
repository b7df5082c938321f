"""The Engine protocol and the registry of engine implementations (imported lazily by name)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from cag.engine.cache import KVCache, KVShape
from cag.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from cag.kvmodule.chain import EngineIdentity, KVSource
    from cag.models import ModelFiles


class Engine(Protocol):
    """Computes, restores and extends KV caches for one model at one dtype."""

    @property
    def identity(self) -> EngineIdentity: ...

    @property
    def kv_shape(self) -> KVShape: ...

    @property
    def context_window(self) -> int: ...

    def prefill(
        self,
        tokens: Sequence[int],
        past: KVCache | None = None,
        *,
        reserve: int = 0,
        chunk_size: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> KVCache:
        """Append `tokens` to `past` (or a new cache with room for `reserve` more); returns the cache.

        With `chunk_size` the tokens go through in chunks and `on_progress` hears each chunk's size.
        """
        ...

    def new_cache(self, capacity: int) -> KVCache:
        """Preallocated, already touched buffers for `capacity` tokens, to be reused across requests."""
        ...

    def restore(
        self, chain: Sequence[KVSource], *, reserve: int, into: KVCache | None = None, overlap: bool = False
    ) -> KVCache:
        """A cache holding the chain's K/V in order (root first), with room for `reserve` more tokens.

        With `into`, its buffers are reused (its content is replaced) when they are large enough.
        With `overlap`, rows arrive in the background and the next forward pass consumes them layer
        by layer as they land; it waits for verification before producing logits.
        """
        ...

    def generate(self, suffix: Sequence[int], cache: KVCache, sampling: SamplingParams) -> Iterator[int]:
        """Prefill `suffix` on top of `cache`, then decode; yields generated token ids as they come."""
        ...


_ENGINES = {"torch": "cag.engine.torch_engine:TorchEngine"}


def load_engine(kind: str, model: ModelFiles, dtype: str) -> Engine:
    """Build an engine by name; implementations are imported only when asked for."""
    try:
        module_name, _, cls_name = _ENGINES[kind].partition(":")
    except KeyError:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(sorted(_ENGINES))}") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    engine: Engine = cls(model, dtype)
    return engine
