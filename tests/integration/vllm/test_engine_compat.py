"""Modules across engines, with the real SmolLM2 (and the tiny model).

1. vLLM serves modules vLLM compiled (one and two levels): the greedy answer is vLLM's full prefill's.
2. The torch engine and vLLM are declared compatible (cag.engine.identity.COMPATIBLE_ENGINES): each serves the
   other's modules with the greedy answer of its own full prefill, over every golden question of the demo's
   shared and billing knowledge. An undeclared engine's module is refused naming engine_fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cag.engine import Engine, SamplingParams
from cag.engine.identity import COMPATIBLE_ENGINES
from cag.errors import ModuleMismatchError
from cag.models import SMOLLM2
from cag.session import Answer, ChainContext, answer_from_modules, answer_with_full_prefill
from tests.conftest import KNOWLEDGE, compile_example

ANSWER = SamplingParams(max_new_tokens=32)


def _compile_chain(engine: Engine, model: str, out: Path, models_dir: Path) -> list[Path]:
    shared = compile_example(KNOWLEDGE / "shared", out, model=model, engine=engine, models_dir=models_dir)
    assert shared.path is not None
    child = compile_example(
        KNOWLEDGE / "billing", out, model=model, engine=engine, models_dir=models_dir, parents=(shared.path,)
    )
    assert child.path is not None
    return [shared.path, child.path]


def _questions() -> list[str]:
    return [
        c["question"]
        for name in ("shared", "billing")
        for c in json.loads((KNOWLEDGE / name / "golden.json").read_text())
    ]


def _served_and_full(paths: list[Path], engine: Engine, models_dir: Path, question: str) -> tuple[Answer, Answer]:
    ctx = ChainContext.open(paths, models_dir=models_dir, engine=engine)
    restored, full = Answer(), Answer()
    list(answer_from_modules(ctx, ctx.modules, question, ANSWER, restored))
    list(answer_with_full_prefill(ctx, question, ANSWER, full))
    return restored, full


@pytest.fixture(scope="module")
def smollm2_chains(
    tmp_path_factory: pytest.TempPathFactory, smollm2_engine: Engine, smollm2_vllm: Engine, models_dir: Path
) -> dict[str, list[Path]]:
    """The same knowledge compiled by each engine (vLLM's rows come from its connector's save path)."""
    out = tmp_path_factory.mktemp("compat")
    return {
        kind: _compile_chain(engine, SMOLLM2, out / kind, models_dir)
        for kind, engine in (("torch", smollm2_engine), ("vllm", smollm2_vllm))
    }


@pytest.mark.smollm2
@pytest.mark.parametrize("depth", [1, 2], ids=["module", "chain-of-two"])
def test_vllm_serves_its_own_modules_with_the_answer_of_its_full_prefill(
    smollm2_chains: dict[str, list[Path]], smollm2_vllm: Engine, models_dir: Path, depth: int
) -> None:
    paths = smollm2_chains["vllm"][:depth]
    for question in _questions()[:4]:
        smollm2_vllm.evict()
        restored, full = _served_and_full(paths, smollm2_vllm, models_dir, question)
        assert len(restored.tokens) > 2
        assert restored.tokens == full.tokens, question
        assert restored.timings is not None
        assert restored.timings.restored_tokens > 0  # the connector wrote the chain: not a silent full prefill


@pytest.mark.smollm2
@pytest.mark.parametrize(("compiled_by", "served_by"), [("torch", "vllm"), ("vllm", "torch")])
def test_declared_compatible_engines_serve_each_others_modules_exactly(
    smollm2_chains: dict[str, list[Path]],
    smollm2_engine: Engine,
    smollm2_vllm: Engine,
    models_dir: Path,
    compiled_by: str,
    served_by: str,
) -> None:
    assert frozenset({compiled_by, served_by}) in COMPATIBLE_ENGINES
    engine = smollm2_vllm if served_by == "vllm" else smollm2_engine
    agree = []
    for question in _questions():
        engine.evict()
        restored, full = _served_and_full(smollm2_chains[compiled_by], engine, models_dir, question)
        agree.append(restored.tokens == full.tokens)
    assert all(agree), f"{sum(agree)}/{len(agree)} answers identical"


def test_tiny_model_modules_cross_engines_exactly(
    tiny_chain: tuple[Path, Path], tiny_vllm: Engine, models_dir: Path
) -> None:
    """The torch engine compiled tiny_chain; vLLM serves it with the answer of its own full prefill."""
    for question in _questions()[:3]:
        tiny_vllm.evict()
        restored, full = _served_and_full(list(tiny_chain), tiny_vllm, models_dir, question)
        assert restored.tokens == full.tokens, question
        assert restored.timings is not None
        assert restored.timings.restored_tokens > 0


def test_an_undeclared_engines_module_is_refused_naming_the_fingerprint(
    tiny_chain: tuple[Path, Path], tiny_vllm: Engine, models_dir: Path
) -> None:
    ctx = ChainContext.open([tiny_chain[0]], models_dir=models_dir, engine=tiny_vllm)
    root = ctx.modules[0]
    foreign = tiny_vllm.identity.engine_fingerprint.replace("engine=vllm", "engine=tensorrt")
    other = dataclasses.replace(root, metadata=dataclasses.replace(root.metadata, engine_fingerprint=foreign))
    with pytest.raises(ModuleMismatchError, match="engine_fingerprint"):
        list(answer_from_modules(ctx, [other], "Hello?", ANSWER, Answer()))
