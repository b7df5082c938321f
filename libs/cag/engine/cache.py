"""Preallocated, token-major KV buffers: the engine's cache and the module file share one layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def reserve(self, tokens: int) -> None:
        """Fail before computing anything if `tokens` more rows do not fit."""
        if self.length + tokens > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {tokens} tokens > capacity {self.capacity}")

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows [start, stop) of every layer: [layers, stop-start, kv_heads, head_dim] views."""
        return self.k[:, start:stop], self.v[:, start:stop]
