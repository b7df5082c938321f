"""Preallocated, token-major KV buffers: the torch engine's memory and the module file share one layout."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from cag.errors import KVCacheFullError
from cag.kvmodule.chain import RowsTarget


@dataclass(frozen=True, kw_only=True)
class KVShape:
    """What a KV row looks like for one model: layers x kv_heads x head_dim per token."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        """Theoretical KV bytes per token: layers * 2 (K and V) * kv_heads * head_dim * dtype bytes."""
        return self.layers * 2 * self.kv_heads * self.head_dim * self.dtype.itemsize


class PendingRestore:
    """Rows of a module still arriving in the background, layer by layer.

    The forward passes of every request waiting for the module wait for each layer's rows just before their
    attention reads them, and for the whole restore (checksums included) before any logits leave them: a query
    overlaps the restore, yet nothing computed from unverified bytes is ever returned. A failure reaches every
    waiter.
    """

    def __init__(self, layers: int) -> None:
        self._loaded = [False] * layers
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._started = time.perf_counter()
        self.seconds = 0.0  # from start to verdict, once finished

    def layer_loaded(self, layer: int) -> None:
        with self._changed:
            self._loaded[layer] = True
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self._done, self._error = True, error
            self.seconds = time.perf_counter() - self._started
            self._changed.notify_all()

    @property
    def done(self) -> bool:
        return self._done

    def wait_layer(self, layer: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._loaded[layer] or self._done)
            self._raise()

    def wait_done(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._done)
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class KVCache:
    """K and V for every layer in preallocated buffers, token-major.

    k, v: [layers, capacity, kv_heads, head_dim]. Rows [0, length) are valid. A module restored into the
    cache fills a contiguous row range per layer, and tokens appended after it never copy what is already
    there.
    """

    def __init__(self, shape: KVShape, capacity: int) -> None:
        self.shape = shape
        self.capacity = capacity
        size = (shape.layers, capacity, shape.kv_heads, shape.head_dim)
        self.k = torch.empty(size, dtype=shape.dtype)
        self.v = torch.empty(size, dtype=shape.dtype)
        self.length = 0

    def view(self, start: int, tokens: int) -> KVCache:
        """Rows [start, start + tokens) as an empty cache of their own, sharing this one's storage."""
        view = KVCache.__new__(KVCache)
        view.shape, view.capacity, view.length = self.shape, tokens, 0
        view.k, view.v = self.k[:, start : start + tokens], self.v[:, start : start + tokens]
        return view

    def reserve(self, tokens: int) -> None:
        """Fail before computing anything if `tokens` more rows do not fit."""
        if self.length + tokens > self.capacity:
            raise KVCacheFullError(f"KV cache full: {self.length} + {tokens} tokens > capacity {self.capacity}")

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows [start, stop) of every layer: [layers, stop-start, kv_heads, head_dim] views."""
        return self.k[:, start:stop], self.v[:, start:stop]

    def rows_target(self, start: int, tokens: int) -> RowsTarget:
        """Where a source writes layer i of a module placed at rows [start, start+tokens)."""

        def layer_rows(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
            # [tokens, kv_heads, head_dim] each: one layer's row range is contiguous in a token-major buffer.
            return self.k[layer, start : start + tokens], self.v[layer, start : start + tokens]

        return layer_rows
