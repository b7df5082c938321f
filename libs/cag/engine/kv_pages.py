"""Where a token's K/V lives in vLLM's paged KV memory, per attention backend; writes and reads are vectorized.

vLLM 0.32 hands every attention layer's KV memory out as one view `[blocks, kv_heads, block_size, C]` with
C = 2 * head_dim, but what the bytes of a (block, head) page mean depends on the backend that reads them:

- CPU_ATTN packs each page as the block's K *transposed*, `[head_dim, block_size]`, followed by its V,
  `[block_size, head_dim]` (the layout `cpu_attn_reshape_and_cache` writes for the "vec"/"vec16" kernels;
  checked byte for byte against that op in the tests).
- FLASH_ATTN (GPU) reads the view as `[blocks, block_size, kv_heads, C]` with each token's `[K | V]` side by
  side.

A module's rows are token-major, `[tokens, kv_heads, head_dim]` per layer (the file format). Positions map to
slots through the request's block table: position p sits in block `block_ids[p // block_size]` at offset
`p % block_size`. Pure torch, no vLLM import: the layouts are unit-tested on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from cag.errors import UnsupportedKVLayoutError


class PageLayout(Protocol):
    def write(self, cache: torch.Tensor, slots: Slots, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put rows k, v ([tokens, kv_heads, head_dim]) at `slots` of one layer's KV memory."""
        ...

    def read(self, cache: torch.Tensor, slots: Slots) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at `slots` of one layer's KV memory, as new tensors [tokens, kv_heads, head_dim]."""
        ...


class Slots:
    """The (block, offset) of each position in [begin, end) of a request whose blocks are `block_ids`."""

    def __init__(self, block_ids: Sequence[int], begin: int, end: int, block_size: int) -> None:
        if not 0 <= begin <= end <= len(block_ids) * block_size:
            raise ValueError(f"positions [{begin}, {end}) do not fit {len(block_ids)} blocks of {block_size}")
        positions = torch.arange(begin, end)
        self.blocks = torch.tensor(list(block_ids), dtype=torch.long)[positions // block_size]
        self.offsets = positions % block_size
        self.begin = begin
        self.end = end

    def __len__(self) -> int:
        return self.end - self.begin

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.blocks.to(device), self.offsets.to(device)

    def block_ids(self) -> set[int]:
        return set(self.blocks.tolist())


class CpuPackedPages:
    """CPU_ATTN: per (block, head), K as [head_dim, block_size] (column-major) then V as [block_size, head_dim]."""

    def write(self, cache: torch.Tensor, slots: Slots, k: torch.Tensor, v: torch.Tensor) -> None:
        keys, values = _cpu_halves(cache)
        blocks, offsets = slots.on(cache.device)
        # Advanced indices around a slice: the indexed dims lead, so the target is [tokens, heads, head_dim].
        keys[blocks, :, :, offsets] = k.to(cache.dtype)
        values[blocks, :, offsets] = v.to(cache.dtype)

    def read(self, cache: torch.Tensor, slots: Slots) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = _cpu_halves(cache)
        blocks, offsets = slots.on(cache.device)
        return keys[blocks, :, :, offsets], values[blocks, :, offsets]


def _cpu_halves(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of one layer's memory: K pages [B, H, D, N] and V pages [B, H, N, D]."""
    blocks, heads, block_size, both = cache.shape
    head_dim = both // 2
    pages = cache.view(blocks, heads, 2 * block_size * head_dim)
    half = block_size * head_dim
    return (
        pages[..., :half].view(blocks, heads, head_dim, block_size),
        pages[..., half:].view(blocks, heads, block_size, head_dim),
    )


class TokenInterleavedPages:
    """FLASH_ATTN: per (block, token, head), [K | V] side by side."""

    def write(self, cache: torch.Tensor, slots: Slots, k: torch.Tensor, v: torch.Tensor) -> None:
        blocks, offsets = slots.on(cache.device)
        cache[blocks, :, offsets] = torch.cat([k, v], dim=-1).to(device=cache.device, dtype=cache.dtype)

    def read(self, cache: torch.Tensor, slots: Slots) -> tuple[torch.Tensor, torch.Tensor]:
        blocks, offsets = slots.on(cache.device)
        rows = cache[blocks, :, offsets]
        head_dim = rows.shape[-1] // 2
        return rows[..., :head_dim].contiguous(), rows[..., head_dim:].contiguous()


# CPU kernels whose page packing CpuPackedPages reproduces; others ("amx" for bf16 on AMX machines, the ARM,
# POWER, s390x and RISC-V kernels) pack differently and are refused rather than guessed.
CPU_KERNELS = frozenset({"vec", "vec16"})
_BACKENDS: dict[str, PageLayout] = {"CPU_ATTN": CpuPackedPages(), "FLASH_ATTN": TokenInterleavedPages()}


def layout_for(backend: str, cpu_kernel: str | None = None) -> PageLayout:
    """The page layout of an attention backend (vLLM's backend name); unknown ones are refused."""
    if backend == "CPU_ATTN" and cpu_kernel not in CPU_KERNELS:
        raise UnsupportedKVLayoutError(
            f"the CPU attention kernel {cpu_kernel!r} packs KV pages in a layout modules cannot be restored into;"
            f" supported: {', '.join(sorted(CPU_KERNELS))} (fp32 on x86)"
        )
    try:
        return _BACKENDS[backend]
    except KeyError:
        raise UnsupportedKVLayoutError(
            f"attention backend {backend} is not supported for module restores; supported: {', '.join(_BACKENDS)}"
        ) from None
