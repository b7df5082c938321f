"""With the real model: answers from restored modules equal a full prefill, token for token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cag.engine import Engine, SamplingParams
from cag.models import SMOLLM2
from cag.session import Answer, ChainContext, answer_from_modules, answer_with_full_prefill
from tests.conftest import KNOWLEDGE, compile_example

pytestmark = pytest.mark.smollm2
DOMAINS = ("billing", "shipping", "api")
QUESTIONS_PER_DOMAIN = 5


@pytest.fixture(scope="module")
def smollm2_chains(
    tmp_path_factory: pytest.TempPathFactory, smollm2_engine: Engine, models_dir: Path
) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("smollm2")
    shared = compile_example(KNOWLEDGE / "shared", out, model=SMOLLM2, engine=smollm2_engine, models_dir=models_dir)
    assert shared.path is not None
    chains = {"shared": [shared.path]}
    for domain in DOMAINS:
        child = compile_example(
            KNOWLEDGE / domain, out, model=SMOLLM2, engine=smollm2_engine, models_dir=models_dir,
            parents=(shared.path,), keep_failed=False,
        )  # fmt: skip
        assert child.path is not None
        assert child.publishable, f"{domain}: golden questions failed"
        chains[domain] = [shared.path, child.path]
    return chains


def _questions(domain: str) -> list[str]:
    cases = json.loads((KNOWLEDGE / domain / "golden.json").read_text())
    return [c["question"] for c in cases[:QUESTIONS_PER_DOMAIN]]


def _both(ctx: ChainContext, question: str, ram: bool) -> tuple[Answer, Answer]:
    sampling = SamplingParams(max_new_tokens=32)
    chain = [m.load() for m in ctx.modules] if ram else ctx.modules
    restored, full = Answer(), Answer()
    list(answer_from_modules(ctx, chain, question, sampling, restored))
    list(answer_with_full_prefill(ctx, question, sampling, full))
    return restored, full


@pytest.mark.parametrize("domain", DOMAINS)
def test_two_level_chain_is_token_exact(
    domain: str, smollm2_chains: dict[str, list[Path]], smollm2_engine: Engine, models_dir: Path
) -> None:
    ctx = ChainContext.open(smollm2_chains[domain], models_dir=models_dir, engine=smollm2_engine)
    for i, question in enumerate(_questions(domain)):
        restored, full = _both(ctx, question, ram=i % 2 == 1)
        assert len(restored.tokens) > 2, question
        assert restored.tokens == full.tokens, (
            f"{question!r}: {ctx.decode(restored.tokens)!r} != {ctx.decode(full.tokens)!r}"
        )


def test_single_module_is_token_exact(
    smollm2_chains: dict[str, list[Path]], smollm2_engine: Engine, models_dir: Path
) -> None:
    ctx = ChainContext.open(smollm2_chains["shared"], models_dir=models_dir, engine=smollm2_engine)
    restored, full = _both(ctx, "Which tool do you use to track a shipment?", ram=False)
    assert restored.tokens == full.tokens
    assert "track" in ctx.decode(restored.tokens).lower()
