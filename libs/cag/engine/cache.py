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
    """Rows of a cache still arriving in the background, layer by layer.

    The forward pass waits for each layer's rows just before its attention reads them, and for
    the whole restore (checksums included) before any logits leave it: a query overlaps the
    restore, yet nothing computed from unverified bytes is ever returned.
    """

    def __init__(self, layers: int, sources: int) -> None:
        self._loaded = [0] * layers
        self._sources = sources
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._started = time.perf_counter()
        self.seconds = 0.0  # from start to verdict, once finished

    def layer_loaded(self, layer: int) -> None:
        with self._changed:
            self._loaded[layer] += 1
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self._done, self._error = True, error
            self.seconds = time.perf_counter() - self._started
            self._changed.notify_all()

    def wait_layer(self, layer: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._loaded[layer] >= self._sources or self._done)
            self._raise_once()

    def wait_done(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._done)
            self._raise_once()

    def _raise_once(self) -> None:
        # The failure reaches the request that was waiting; the buffers stay free for the next restore.
        error, self._error = self._error, None
        if error is not None:
            raise error


class KVCache:
    """K and V for every layer in preallocated buffers, token-major.

    k, v: [layers, capacity, kv_heads, head_dim]. Rows [0, length) are valid. A
    module restored into the cache fills a contiguous row range per layer, and a
    query appended after it never copies what is already there. Truncating back
    to a module's length makes the cache reusable for the next query.
    """

    def __init__(self, shape: KVShape, capacity: int) -> None:
        self.shape = shape
        self.capacity = capacity
        size = (shape.layers, capacity, shape.kv_heads, shape.head_dim)
        self.k = torch.empty(size, dtype=shape.dtype)
        self.v = torch.empty(size, dtype=shape.dtype)
        self.length = 0
        self.pending: PendingRestore | None = None

    def truncate(self, length: int) -> None:
        self.settle()
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def settle(self) -> None:
        """Wait for a background restore to finish; raises its error (e.g. a checksum mismatch)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.wait_done()

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
