"""Page layouts of vLLM's KV memory: module rows written where the attention kernels read them, and read back."""

from __future__ import annotations

import pytest
import torch

from cag.engine.kv_pages import CpuPackedPages, Slots, TokenInterleavedPages, layout_for
from cag.errors import UnsupportedKVLayoutError

BLOCKS, HEADS, BLOCK_SIZE, HEAD_DIM = 6, 2, 32, 64
BLOCK_IDS = (4, 1, 3)  # a request's block table: not in order, not from 0


def _rows(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, HEADS, HEAD_DIM, generator=g), torch.randn(tokens, HEADS, HEAD_DIM, generator=g))


def _memory() -> torch.Tensor:
    return torch.zeros(BLOCKS, HEADS, BLOCK_SIZE, 2 * HEAD_DIM)


def test_slots_follow_the_block_table() -> None:
    slots = Slots(BLOCK_IDS, 30, 66, BLOCK_SIZE)
    assert len(slots) == 36
    assert slots.blocks.tolist() == [4, 4] + [1] * 32 + [3, 3]
    assert slots.offsets.tolist() == [30, 31, *range(32), 0, 1]
    assert slots.block_ids() == {4, 1, 3}
    with pytest.raises(ValueError, match="do not fit"):
        Slots(BLOCK_IDS, 0, 97, BLOCK_SIZE)


@pytest.mark.parametrize("isa", ["vec", "vec16"])
def test_cpu_pages_are_what_vllms_own_cpu_kernel_writes(isa: str) -> None:
    """The reference: vLLM's cpu_attn_reshape_and_cache op, writing the same rows at the same slots."""
    from vllm import _custom_ops as ops

    k, v = _rows(70, seed=1)
    slots = Slots(BLOCK_IDS, 10, 80, BLOCK_SIZE)
    ours = _memory()
    CpuPackedPages().write(ours, slots, k, v)

    theirs = _memory()
    key_cache, value_cache = theirs.view(BLOCKS, HEADS, 2 * BLOCK_SIZE, HEAD_DIM).chunk(2, dim=2)
    slot_mapping = slots.blocks * BLOCK_SIZE + slots.offsets
    ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slot_mapping, isa)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("layout", [CpuPackedPages(), TokenInterleavedPages()], ids=["cpu", "flash"])
def test_rows_read_back_are_the_rows_written_and_nothing_else_moves(layout: CpuPackedPages) -> None:
    k, v = _rows(50, seed=2)
    slots = Slots(BLOCK_IDS, 20, 70, BLOCK_SIZE)
    memory = _memory()
    before_k, before_v = _rows(96, seed=3)
    layout.write(memory, Slots(BLOCK_IDS, 0, 96, BLOCK_SIZE), before_k, before_v)  # every slot of the table full
    layout.write(memory, slots, k, v)
    got_k, got_v = layout.read(memory, slots)
    assert torch.equal(got_k, k)
    assert torch.equal(got_v, v)
    rest_k, rest_v = layout.read(memory, Slots(BLOCK_IDS, 0, 20, BLOCK_SIZE))
    assert torch.equal(rest_k, before_k[:20])
    assert torch.equal(rest_v, before_v[:20])
    assert memory[[0, 2, 5]].abs().sum() == 0  # blocks outside the table untouched


def test_flash_pages_hold_each_tokens_k_then_v() -> None:
    k, v = _rows(3, seed=4)
    memory = _memory()
    TokenInterleavedPages().write(memory, Slots(BLOCK_IDS, 0, 3, BLOCK_SIZE), k, v)
    assert torch.equal(memory[4, :, 1, :HEAD_DIM], k[1])
    assert torch.equal(memory[4, :, 1, HEAD_DIM:], v[1])


def test_unknown_backends_and_cpu_kernels_are_refused_by_name() -> None:
    assert isinstance(layout_for("CPU_ATTN", "vec"), CpuPackedPages)
    assert isinstance(layout_for("FLASH_ATTN"), TokenInterleavedPages)
    with pytest.raises(UnsupportedKVLayoutError, match="'amx'"):
        layout_for("CPU_ATTN", "amx")
    with pytest.raises(UnsupportedKVLayoutError, match="TRITON_ATTN"):
        layout_for("TRITON_ATTN")
