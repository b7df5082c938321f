"""The torch reference engine: agrees with transformers, and restoring modules is exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from cag.engine import Engine, SamplingParams
from cag.errors import ChainError, ModuleCorruptedError, ModuleMismatchError
from cag.kvmodule import ModuleFile
from cag.models import ModelFiles
from cag.session import Answer, ChainContext, answer_from_modules, answer_with_full_prefill

QUESTIONS = ["How do refunds work?", "  What is the fee?", "\nWho pays for shipping?", "¿Qué pasa?", "<|im_end| odd"]


def test_logits_match_transformers(tiny_model: ModelFiles, tiny_engine: Engine) -> None:
    hf = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    ids = torch.arange(100, 160)
    cache = tiny_engine.prefill(ids[:40].tolist(), reserve=40)
    with torch.no_grad():
        reference = hf(ids[None]).logits[0]
    ours = tiny_engine.model.forward(ids[40:], cache)  # type: ignore[attr-defined]
    torch.testing.assert_close(ours, reference[-1], atol=1e-4, rtol=1e-4)


def test_chunked_prefill_matches_one_pass(tiny_engine: Engine) -> None:
    ids = list(range(200, 500))
    whole = tiny_engine.prefill(ids)
    chunked = tiny_engine.prefill(ids, chunk_size=64)
    torch.testing.assert_close(chunked.k[:, :300], whole.k[:, :300], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.v[:, :300], whole.v[:, :300], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("question", QUESTIONS)
@pytest.mark.parametrize("tier", ["file", "ram"])
def test_restored_chain_answers_exactly_like_a_full_prefill(
    tiny_chain: tuple[Path, Path], tiny_engine: Engine, models_dir: Path, question: str, tier: str
) -> None:
    ctx = ChainContext.open(list(tiny_chain), models_dir=models_dir, engine=tiny_engine)
    chain = ctx.modules if tier == "file" else [m.load() for m in ctx.modules]
    sampling = SamplingParams(max_new_tokens=24)
    restored, full = Answer(), Answer()
    list(answer_from_modules(ctx, chain, question, sampling, restored))
    list(answer_with_full_prefill(ctx, question, sampling, full))
    assert len(restored.tokens) > 1
    assert restored.tokens == full.tokens


def test_single_root_module_answers_exactly(
    tiny_chain: tuple[Path, Path], tiny_engine: Engine, models_dir: Path
) -> None:
    ctx = ChainContext.open([tiny_chain[0]], models_dir=models_dir, engine=tiny_engine)
    sampling = SamplingParams(max_new_tokens=24)
    restored, full = Answer(), Answer()
    list(answer_from_modules(ctx, ctx.modules, QUESTIONS[0], sampling, restored))
    list(answer_with_full_prefill(ctx, QUESTIONS[0], sampling, full))
    assert restored.tokens == full.tokens


def test_restoring_a_chain_is_concatenation(tiny_chain: tuple[Path, Path], tiny_engine: Engine) -> None:
    modules = [ModuleFile.open(p) for p in tiny_chain]
    cache = tiny_engine.restore(list(reversed(modules)), reserve=0)  # given out of order: sorted by parent links
    tokens = [t for m in modules for t in m.token_ids()]
    assert cache.length == len(tokens)
    reference = tiny_engine.prefill(tokens, chunk_size=256)
    torch.testing.assert_close(cache.k[:, : len(tokens)], reference.k[:, : len(tokens)], atol=1e-5, rtol=1e-5)


def test_child_without_its_parent_is_refused(tiny_chain: tuple[Path, Path], tiny_engine: Engine) -> None:
    with pytest.raises(ChainError, match="parent"):
        tiny_engine.restore([ModuleFile.open(tiny_chain[1])], reserve=8)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_revision", "0" * 64),
        ("tokenizer_revision", "1" * 64),
        ("engine_fingerprint", "llama;layers=99"),
        ("dtype", "bf16"),
    ],
)
def test_module_built_for_something_else_is_refused_naming_the_field(
    tiny_chain: tuple[Path, Path], tiny_engine: Engine, field: str, value: str
) -> None:
    module = ModuleFile.open(tiny_chain[0])
    other = dataclasses.replace(module, metadata=dataclasses.replace(module.metadata, **{field: value}))
    with pytest.raises(ModuleMismatchError, match=field) as caught:
        tiny_engine.restore([other], reserve=8)
    assert caught.value.field == field


def test_module_of_another_layout_is_refused(tiny_chain: tuple[Path, Path], tiny_engine: Engine) -> None:
    module = ModuleFile.open(tiny_chain[0])
    with pytest.raises(ModuleMismatchError, match="layout_hash"):
        tiny_engine.identity.check(module.metadata, layout_hash="f" * 64)


def test_module_of_another_model_is_refused_by_the_cli_path(
    tiny_chain: tuple[Path, Path], smollm2_engine: Engine, models_dir: Path
) -> None:
    """A tiny-model module handed to a SmolLM2 engine is refused before anything is restored."""
    with pytest.raises(ModuleMismatchError, match="model_revision"):
        ChainContext.open([tiny_chain[0]], models_dir=models_dir, engine=smollm2_engine)


def test_overlapped_restore_is_exact_and_reuses_the_scratch_cache(
    tiny_chain: tuple[Path, Path], tiny_engine: Engine
) -> None:
    modules = [ModuleFile.open(p) for p in tiny_chain]
    suffix = list(range(300, 320))
    sampling = SamplingParams(max_new_tokens=16)
    serial = list(tiny_engine.generate(suffix, tiny_engine.restore(modules, reserve=40), sampling))
    scratch = tiny_engine.new_cache(sum(m.token_count for m in modules) + 40)
    for _ in range(2):  # the second round reuses the buffers the first one filled
        cache = tiny_engine.restore(modules, reserve=40, into=scratch, overlap=True)
        assert cache is scratch
        assert list(tiny_engine.generate(suffix, cache, sampling)) == serial


def test_overlapped_restore_of_a_damaged_module_yields_no_token(
    tiny_chain: tuple[Path, Path], tiny_engine: Engine, tmp_path: Path
) -> None:
    damaged = tmp_path / "m.safetensors"
    damaged.write_bytes(tiny_chain[0].read_bytes())
    module = ModuleFile.open(damaged)
    with damaged.open("r+b") as f:
        f.seek(module.data_offset + module.data_bytes - 100)  # in the last layer: read after the query started
        f.write(b"\x00\x01\x02\x03")
    scratch = tiny_engine.new_cache(module.token_count + 40)
    cache = tiny_engine.restore([module], reserve=40, into=scratch, overlap=True)
    tokens: list[int] = []
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        tokens.extend(tiny_engine.generate([5, 6, 7], cache, SamplingParams(max_new_tokens=4)))
    assert tokens == []
    healthy = tiny_engine.restore([ModuleFile.open(tiny_chain[0])], reserve=40, into=scratch, overlap=True)
    assert len(list(tiny_engine.generate([5, 6, 7], healthy, SamplingParams(max_new_tokens=4)))) == 4
