"""Session fixtures shared by every test tier.

The test session hosts engines: like every such process it is tuned (cag.engine_runtime) before torch loads,
hence the imports after the tuning.
"""

# ruff: noqa: E402

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from cag.engine_runtime import tune_engine_runtime
from cag.settings import CagSettings

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# The CLI under test reads its settings from the environment, like a user's shell.
os.environ.setdefault("CAG_HOME", str(REPO / ".cag"))
# One thread in tests, whatever the shell or the Makefile says: the servers under test share the two cores.
os.environ["CAG_NUM_THREADS"] = "1"
# Commands and services the tests start compile and answer with the torch engine, which starts in a second; vLLM
# (the default where installed) is tested where it is named: its conformance and connector tests, the cross-engine
# tests and the serving path end to end.
os.environ["CAG_ENGINE"] = "torch"
tune_engine_runtime(CagSettings().num_threads, os.environ)

import pytest

from cag.compiler.pipeline import CompileResult, compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.engine import Engine, load_engine
from cag.models import SMOLLM2, TINY, ModelFiles, resolve_model
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.store import PostgresStore
from tests.infra_fixtures import FreshDatabase, fresh_database, infra  # noqa: F401  (real Postgres and NATS)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Converted models are cached across runs (CAG_HOME, as the Makefile sets it)."""
    return Path(os.environ["CAG_HOME"]) / "models"


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> ModelFiles:
    return resolve_model(TINY, models_dir)


@pytest.fixture(scope="session")
def smollm2(models_dir: Path) -> ModelFiles:
    return resolve_model(SMOLLM2, models_dir)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model: ModelFiles) -> Engine:
    return load_engine("torch", tiny_model, "fp32")


@pytest.fixture(scope="session")
def smollm2_engine(smollm2: ModelFiles) -> Engine:
    return load_engine("torch", smollm2, "fp32")


@pytest.fixture(scope="session")
def tiny_vllm(tiny_model: ModelFiles) -> Iterator[Engine]:
    """The vLLM engine on the tiny model, for the whole session (it takes seconds to start); tests empty it."""
    engine = load_engine("vllm", tiny_model, "fp32")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smollm2_vllm(smollm2: ModelFiles) -> Iterator[Engine]:
    engine = load_engine("vllm", smollm2, "fp32", kv_capacity=SMOLLM2_VLLM_TOKENS)
    yield engine
    engine.close()


# KV memory of the session's SmolLM2 vLLM engine: enough for the tests' prompts, not the whole 8k context.
SMOLLM2_VLLM_TOKENS = 4096


LAYOUT = EXAMPLES / "layouts" / "support_agent.v1.json"
# The tiny model has random weights: its greedy answers are deterministic nonsense subwords. A golden
# case needs a non-empty expect list (load_golden refuses []), so the passing case expects the single
# letter "e", which its answers contain. The matching is a case-insensitive substring test, so this is
# the weakest expectation that still exercises the golden gate.
PASSING_GOLDEN = [{"question": "How much do widgets cost?", "expect": ["e"]}]
KNOWLEDGE = EXAMPLES / "knowledge"


def compile_example(
    source: Path, out: Path, *, model: str, engine: Engine, models_dir: Path, parents: tuple[Path, ...] = (), **kw: Any
) -> CompileResult:
    """Compile a demo source as tenant `acme`; golden failures are kept (the tiny model answers nonsense)."""
    request = CompileRequest(
        model=model,
        tokenizer=None,
        source=source,
        layout=kw.pop("layout", LAYOUT),
        acl=AclSpec.parse(kw.pop("acl", "tenant:acme")),
        out=out,
        parents=parents,
        keep_failed=kw.pop("keep_failed", True),
        **kw,
    )
    return compile_module(request, models_dir=models_dir, engine=engine)


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory: pytest.TempPathFactory, tiny_engine: Engine, models_dir: Path) -> tuple[Path, Path]:
    """(shared root module, billing child module) compiled with the tiny model."""
    out = tmp_path_factory.mktemp("tiny-chain")
    shared = compile_example(KNOWLEDGE / "shared", out, model=TINY, engine=tiny_engine, models_dir=models_dir)
    assert shared.path is not None
    child = compile_example(
        KNOWLEDGE / "billing", out, model=TINY, engine=tiny_engine, models_dir=models_dir, parents=(shared.path,)
    )
    assert child.path is not None
    return shared.path, child.path


@pytest.fixture(scope="session")
def servable_chain(
    tmp_path_factory: pytest.TempPathFactory, tiny_engine: Engine, models_dir: Path
) -> tuple[Path, Path]:
    """(root, child) compiled with the tiny model from the demo knowledge, publishable: the tiny model's random
    weights fail the demo's golden questions, so each source gets the weakest passing one instead (its answers
    contain the letter "e": PASSING_GOLDEN)."""
    work = tmp_path_factory.mktemp("cachepool-chain")
    sources = {}
    for name in ("shared", "billing"):
        shutil.copytree(KNOWLEDGE / name, work / name)
        (work / name / "golden.json").write_text(json.dumps(PASSING_GOLDEN))
        sources[name] = work / name
    root = compile_example(sources["shared"], work / "out", model=TINY, engine=tiny_engine, models_dir=models_dir)
    assert root.path is not None
    child = compile_example(
        sources["billing"], work / "out", model=TINY, engine=tiny_engine, models_dir=models_dir, parents=(root.path,)
    )
    assert child.path is not None
    return root.path, child.path


@pytest.fixture
async def store(fresh_database: FreshDatabase) -> AsyncIterator[PostgresStore]:  # noqa: F811  (the fixture)
    """The registry store on a fresh, migrated database."""
    engine = connect(fresh_database.database_url)
    try:
        yield PostgresStore(session_factory(engine))
    finally:
        await engine.dispose()
