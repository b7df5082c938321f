"""The torch reference engine: agrees with transformers, restores zero-copy into memory it owns, shares
resident modules between requests without copying them, and answers from restored modules exactly like a
full prefill (the engine-independent promises are in tests/conformance/test_engine_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from cag.engine import Engine, GenerateRequest, SamplingParams, load_engine
from cag.engine.cache import KVCache, PendingRestore
from cag.engine.torch_engine import TorchEngine
from cag.errors import (
    InvalidFieldError,
    InvalidInputError,
    KVTensorMismatchError,
    ModuleCorruptedError,
    ModuleMismatchError,
    UnknownEngineError,
)
from cag.kvmodule import ModuleFile
from cag.models import ModelFiles
from cag.session import Answer, ChainContext, answer_from_modules, answer_with_full_prefill

QUESTIONS = ["How do refunds work?", "  What is the fee?", "\nWho pays for shipping?", "¿Qué pasa?", "<|im_end| odd"]


@pytest.fixture
def engine(tiny_model: ModelFiles) -> TorchEngine:
    """A fresh engine: these tests look at what it holds."""
    engine = load_engine("torch", tiny_model, "fp32")
    assert isinstance(engine, TorchEngine)
    return engine


def test_logits_match_transformers(tiny_model: ModelFiles, engine: TorchEngine) -> None:
    hf = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    ids = torch.arange(100, 160)
    cache = KVCache(engine.kv_shape, 80)
    engine.model.forward(ids[:40], cache)
    with torch.no_grad():
        reference = hf(ids[None]).logits[0]
    ours = engine.model.forward(ids[40:], cache)
    torch.testing.assert_close(ours, reference[-1], atol=1e-4, rtol=1e-4)


def test_chunked_prefill_matches_one_pass(engine: Engine) -> None:
    ids = list(range(200, 500))
    whole = engine.prefill_module([], ids)
    chunked = engine.prefill_module([], ids, chunk_size=64)
    torch.testing.assert_close(chunked.k, whole.k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.v, whole.v, atol=1e-5, rtol=1e-5)


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
    assert restored.timings is not None and restored.timings.reused_tokens + restored.timings.restored_tokens > 0


def test_single_root_module_answers_exactly(
    tiny_chain: tuple[Path, Path], tiny_engine: Engine, models_dir: Path
) -> None:
    ctx = ChainContext.open([tiny_chain[0]], models_dir=models_dir, engine=tiny_engine)
    sampling = SamplingParams(max_new_tokens=24)
    restored, full = Answer(), Answer()
    list(answer_from_modules(ctx, ctx.modules, QUESTIONS[0], sampling, restored))
    list(answer_with_full_prefill(ctx, QUESTIONS[0], sampling, full))
    assert restored.tokens == full.tokens


def test_a_context_of_its_own_sizes_the_engine_to_the_chain(tiny_chain: tuple[Path, Path], models_dir: Path) -> None:
    ctx = ChainContext.open(list(tiny_chain), models_dir=models_dir)
    # The chain resident, plus one request's own rows as large as the full-prefill baseline needs.
    assert 2 * ctx.module_tokens < ctx.engine.kv_capacity
    answer = Answer()
    list(answer_from_modules(ctx, ctx.modules, QUESTIONS[0], SamplingParams(max_new_tokens=8), answer))
    assert len(answer.tokens) == 8
    full = Answer()
    list(answer_with_full_prefill(ctx, QUESTIONS[0], SamplingParams(max_new_tokens=8), full))
    assert full.tokens == answer.tokens


def _resident_rows(engine: TorchEngine, module_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    module = engine._resident._modules[module_id]
    return module.memory.k, module.memory.v


def test_restoring_a_chain_is_concatenation(tiny_chain: tuple[Path, Path], engine: TorchEngine) -> None:
    modules = [ModuleFile.open(p) for p in tiny_chain]
    prefix = [t for m in modules for t in m.token_ids()]
    reference = engine.prefill_module([], prefix, chunk_size=256)
    # Given out of order: sorted by parent links.
    list(engine.generate(GenerateRequest(chain=modules[::-1], suffix=[1], sampling=SamplingParams(max_new_tokens=1))))
    start = 0
    for module in modules:
        k, v = _resident_rows(engine, module.metadata.module_id)
        end = start + module.token_count
        # The child was compiled attending over its parent segment by segment: sums in another order.
        torch.testing.assert_close(k, reference.k[:, start:end], atol=5e-4, rtol=1e-3)
        torch.testing.assert_close(v, reference.v[:, start:end], atol=5e-4, rtol=1e-3)
        start = end


def test_a_resident_module_is_shared_in_place_by_every_request(
    tiny_chain: tuple[Path, Path], engine: TorchEngine
) -> None:
    module = ModuleFile.open(tiny_chain[0])
    request = GenerateRequest(chain=[module], suffix=[5, 6, 7], sampling=SamplingParams(max_new_tokens=2))
    first = list(engine.generate(request))
    k, v = _resident_rows(engine, module.metadata.module_id)
    second = list(engine.generate(request))
    # The same buffers: the second request read the rows where they were, and wrote none of them.
    assert _resident_rows(engine, module.metadata.module_id) == (k, v)
    assert [e.token_id for e in first] == [e.token_id for e in second]
    assert (second[-1].timings.reused_tokens, second[-1].timings.restored_tokens) == (module.token_count, 0)
    assert second[-1].timings.restore_s == 0.0
    # The file's rows are the buffer's rows: a zero-copy read landed them there.
    loaded = module.load()
    assert torch.equal(k, loaded.k) and torch.equal(v, loaded.v)


def test_concurrent_streams_interleave_on_one_module(tiny_chain: tuple[Path, Path], engine: TorchEngine) -> None:
    """Two open streams advanced alternately: neither disturbs the other (each writes only its own rows)."""
    modules = [ModuleFile.open(p) for p in tiny_chain]
    sampling = SamplingParams(max_new_tokens=10)
    alone = [e.token_id for e in engine.generate(GenerateRequest(chain=modules, suffix=[5, 6], sampling=sampling))]
    other = [e.token_id for e in engine.generate(GenerateRequest(chain=modules, suffix=[9, 8], sampling=sampling))]
    a = engine.generate(GenerateRequest(chain=modules, suffix=[5, 6], sampling=sampling))
    b = engine.generate(GenerateRequest(chain=modules, suffix=[9, 8], sampling=sampling))
    interleaved = [(next(a).token_id, next(b).token_id) for _ in range(10)]
    assert [x for x, _ in interleaved] == alone
    assert [y for _, y in interleaved] == other


def test_closing_a_stream_gives_its_rows_back(tiny_chain: tuple[Path, Path], engine: TorchEngine) -> None:
    module = ModuleFile.open(tiny_chain[0])
    engine.load([module])
    free = engine.kv_tokens_free
    stream = engine.generate(GenerateRequest(chain=[module], suffix=[5, 6], sampling=SamplingParams(max_new_tokens=50)))
    next(stream)
    assert engine.kv_tokens_free == free - 52  # suffix and answer reserved
    stream.close()
    assert engine.kv_tokens_free == free


def test_read_rows_into_a_target_yields_the_target_itself(tiny_chain: tuple[Path, Path], engine: Engine) -> None:
    module = ModuleFile.open(tiny_chain[0])
    cache = KVCache(engine.kv_shape, module.token_count + 3)
    target = cache.rows_target(3, module.token_count)
    for rows in module.read_rows(into=target):
        k, v = target(rows.layer)
        assert rows.k.data_ptr() == k.data_ptr() and rows.v.data_ptr() == v.data_ptr()
    own = list(module.read_rows())
    assert torch.equal(own[-1].k, cache.k[-1, 3:])


def test_read_rows_refuses_a_target_of_another_shape(tiny_chain: tuple[Path, Path], engine: Engine) -> None:
    module = ModuleFile.open(tiny_chain[0])
    cache = KVCache(engine.kv_shape, module.token_count + 1)
    short = cache.rows_target(0, module.token_count - 1)
    for source in (module, module.load()):
        with pytest.raises(KVTensorMismatchError, match="k.0 target"):
            list(source.read_rows(into=short))


def test_a_layer_waits_only_for_its_own_rows() -> None:
    pending = PendingRestore(layers=2)
    pending.layer_loaded(0)
    pending.wait_layer(0)  # returns although layer 1 has not arrived
    pending.finish(ModuleCorruptedError("checksum does not verify"))
    # Every request waiting on a shared restore hears of its failure.
    for _ in range(2):
        with pytest.raises(ModuleCorruptedError):
            pending.wait_layer(1)
        with pytest.raises(ModuleCorruptedError):
            pending.wait_done()


def test_a_module_built_for_something_else_is_refused_naming_the_field(
    tiny_chain: tuple[Path, Path], engine: Engine
) -> None:
    import dataclasses

    module = ModuleFile.open(tiny_chain[0])
    for field, value in [("model_revision", "0" * 64), ("tokenizer_revision", "1" * 64), ("dtype", "bf16")]:
        other = dataclasses.replace(module, metadata=dataclasses.replace(module.metadata, **{field: value}))
        with pytest.raises(ModuleMismatchError, match=field) as caught:
            engine.prefill_module([other], [1])
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


def test_unknown_engine_kind_is_a_typed_error(tiny_model: ModelFiles) -> None:
    with pytest.raises(UnknownEngineError, match="'nope'.*known: torch"):
        load_engine("nope", tiny_model, "fp32")


def test_a_kv_capacity_of_no_tokens_is_refused(tiny_model: ModelFiles) -> None:
    with pytest.raises(InvalidFieldError, match="kv_capacity"):
        load_engine("torch", tiny_model, "fp32", kv_capacity=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", -0.5),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("logprobs", -1),
        ("stop_sequences", frozenset({()})),
    ],
)
def test_invalid_sampling_params_are_invalid_input(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=field) as caught:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert isinstance(caught.value, InvalidFieldError) and caught.value.field == field


def test_a_request_without_suffix_tokens_is_invalid_input() -> None:
    with pytest.raises(InvalidFieldError, match="suffix"):
        GenerateRequest(chain=[], suffix=[], sampling=SamplingParams())


def test_the_engine_kinds_settings_name_are_the_engines_load_engine_builds() -> None:
    from cag.engine import engine_kinds
    from cag.settings import ENGINE_KINDS

    assert engine_kinds() == sorted(ENGINE_KINDS)
