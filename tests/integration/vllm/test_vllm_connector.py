"""The platform's KV connector inside a real vLLM engine (CPU backend, tiny model).

Every test compares with vLLM's own full prefill of the same tokens and proves the connector really restored
the chain (its report counts the tokens it wrote; vLLM counts them as cached), so a silent full prefill fails.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cag.engine import Engine, GenerateRequest, SamplingParams, TokenEvent, load_engine
from cag.engine.vllm_connector import Plan
from cag.engine.vllm_engine import VLLMEngine
from cag.errors import ModuleCorruptedError
from cag.kvmodule import KVSource, ModuleFile
from cag.kvmodule.chain import LayerRows, RowsTarget
from cag.metadata import ModuleMetadata
from cag.models import ModelFiles
from tests.integration.vllm.conftest import write_chain_module

GREEDY = SamplingParams(max_new_tokens=16, logprobs=3)
SUFFIX = (300, 301, 302, 7, 8, 9, 1000)


@pytest.fixture
def vllm(tiny_vllm: Engine) -> VLLMEngine:
    assert isinstance(tiny_vllm, VLLMEngine)
    tiny_vllm.evict()
    return tiny_vllm


@pytest.fixture(scope="module")
def template(tiny_chain: tuple[Path, Path]) -> ModuleMetadata:
    return ModuleFile.open(tiny_chain[0]).metadata


@pytest.fixture(scope="module")
def modules(
    tiny_vllm: Engine, template: ModuleMetadata, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ModuleFile]:
    """A 200-token root (not a multiple of the 128-token block) and a 150-token child, computed by vLLM."""
    folder = tmp_path_factory.mktemp("vllm-modules")
    root = write_chain_module(tiny_vllm, template, range(1000, 1200), folder, name="root200")
    child = write_chain_module(tiny_vllm, template, range(2000, 2150), folder, parents=[root], name="child150")
    return {"root": root, "child": child}


def _run(engine: Engine, chain: Sequence[KVSource], suffix: Sequence[int]) -> list[TokenEvent]:
    return list(engine.generate(GenerateRequest(chain=chain, suffix=suffix, sampling=GREEDY)))


def _plain(engine: Engine, chain: Sequence[KVSource], suffix: Sequence[int]) -> list[TokenEvent]:
    return _run(engine, (), [*(t for m in chain for t in m.tokens()), *suffix])


def _assert_identical(ours: list[TokenEvent], reference: list[TokenEvent]) -> None:
    """Rows vLLM computed itself, restored into its own blocks: bit for bit the same answer."""
    assert [e.token_id for e in ours] == [e.token_id for e in reference]
    assert [e.logprobs for e in ours] == [e.logprobs for e in reference]


@pytest.mark.parametrize("tier", ["file", "ram"])
def test_a_module_of_200_tokens_restores_into_a_partial_block(
    vllm: VLLMEngine, modules: dict[str, ModuleFile], tier: str
) -> None:
    root = modules["root"]
    source: KVSource = root if tier == "file" else root.load()
    ours = _run(vllm, [source], SUFFIX)
    _assert_identical(ours, _plain(vllm, [root], SUFFIX))
    assert ours[0].timings.restored_tokens == 200  # written by the connector, not prefilled


def test_a_chain_of_two_modules_restores_both(vllm: VLLMEngine, modules: dict[str, ModuleFile]) -> None:
    chain = [modules["root"], modules["child"]]
    ours = _run(vllm, chain, SUFFIX)
    _assert_identical(ours, _plain(vllm, chain, SUFFIX))
    assert ours[0].timings.restored_tokens == 350


def test_the_second_request_on_a_chain_hits_the_prefix_cache(vllm: VLLMEngine, modules: dict[str, ModuleFile]) -> None:
    chain = [modules["root"], modules["child"]]
    _run(vllm, chain, SUFFIX)
    again = _run(vllm, chain, (5, 6, 7))
    _assert_identical(again, _plain(vllm, chain, (5, 6, 7)))
    assert (again[0].timings.reused_tokens, again[0].timings.restored_tokens) == (256, 94)  # 2 whole blocks
    # Resident: every whole block the module touches is held (the last partial block never is).
    assert vllm.resident() == {"root200": 200, "child150": 150}


def _raw(vllm: VLLMEngine, prompt: list[int], plan: Plan, *, salt: bool = True) -> tuple[list[int], object]:
    """One request straight to vLLM with a plan of our choosing (prompt and chain may disagree); salted with its
    own key unless `salt` is False. Returns the tokens and the connector's report."""
    tokens, report, _ = _raw_counted(vllm, prompt, plan, salt=salt)
    return tokens, report


def _raw_counted(vllm: VLLMEngine, prompt: list[int], plan: Plan, *, salt: bool) -> tuple[list[int], object, int]:
    """`_raw`, and how many prompt tokens vLLM found cached (its prefix cache and the connector together)."""
    from vllm import TokensPrompt

    key = vllm._directory.open(plan)
    sampling = vllm._sampling(GREEDY, GREEDY.max_new_tokens, key)
    tokens_prompt = TokensPrompt(prompt_token_ids=prompt)
    if salt:
        tokens_prompt["cache_salt"] = f"raw-{key}"
    outputs = vllm._loop.submit(f"raw-{key}", tokens_prompt, sampling)
    tokens: list[int] = []
    while True:
        output = outputs.get()
        assert not isinstance(output, BaseException), output
        tokens.extend(output.outputs[0].token_ids)
        if output.finished:
            break
    return tokens, vllm._directory.close(key).report, output.num_cached_tokens or 0


def test_a_plain_request_never_reuses_module_rows_from_the_prefix_cache(
    tiny_chain: tuple[Path, Path], vllm: VLLMEngine
) -> None:
    """Modules compiled by the torch engine are vLLM-cached under their chain's salt: the same tokens asked
    plainly are prefilled by vLLM itself, and a second plain request reuses only what the first computed."""
    chain = [ModuleFile.open(p) for p in tiny_chain]
    served = _run(vllm, chain, SUFFIX)
    assert served[0].timings.restored_tokens == sum(m.token_count for m in chain)
    prompt = [*(t for m in chain for t in m.tokens()), *SUFFIX]
    _, report, cached = _raw_counted(vllm, prompt, Plan(), salt=False)
    assert (report, cached) == (None, 0)
    _, _, cached_again = _raw_counted(vllm, prompt, Plan(), salt=False)
    assert cached_again == len(prompt) // vllm.block_size * vllm.block_size  # its own blocks, now cached


def test_a_module_covering_the_whole_prompt_leaves_the_last_token_to_compute(
    vllm: VLLMEngine, modules: dict[str, ModuleFile]
) -> None:
    root = modules["root"]
    tokens, report = _raw(vllm, root.tokens(), Plan(chain_tokens=tuple(root.tokens()), sources=(root,)))
    plain, nothing = _raw(vllm, root.tokens(), Plan())
    assert tokens == plain
    assert nothing is None
    assert report is not None and report.error is None  # type: ignore[attr-defined]
    assert report.restored_tokens == 199  # type: ignore[attr-defined]


def test_a_prompt_that_does_not_start_with_the_chain_matches_nothing(
    vllm: VLLMEngine, modules: dict[str, ModuleFile]
) -> None:
    root = modules["root"]
    other = [t + 1 for t in root.tokens()] + list(SUFFIX)
    tokens, report = _raw(vllm, other, Plan(chain_tokens=tuple(root.tokens()), sources=(root,)))
    plain, _ = _raw(vllm, other, Plan())
    assert tokens == plain
    assert report is None  # 0 tokens matched: the connector never restored


def _damaged(module: ModuleFile, folder: Path) -> ModuleFile:
    copy = folder / module.path.name
    shutil.copyfile(module.path, copy)
    opened = ModuleFile.open(copy)
    with copy.open("r+b") as f:
        f.seek(opened.data_offset + opened.data_bytes // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    return opened


def test_a_corrupt_file_is_recomputed_by_vllm_with_the_same_output(
    vllm: VLLMEngine, modules: dict[str, ModuleFile], tmp_path: Path
) -> None:
    root = modules["root"]
    prompt = [*root.tokens(), *SUFFIX]
    tokens, report = _raw(vllm, prompt, Plan(chain_tokens=tuple(root.tokens()), sources=(_damaged(root, tmp_path),)))
    plain, _ = _raw(vllm, prompt, Plan())
    assert tokens == plain
    assert isinstance(report.error, ModuleCorruptedError)  # type: ignore[attr-defined]


def test_through_the_engine_a_corrupt_file_fails_the_request_before_any_token(
    vllm: VLLMEngine, modules: dict[str, ModuleFile], tmp_path: Path
) -> None:
    events: list[TokenEvent] = []
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        events.extend(
            vllm.generate(GenerateRequest(chain=[_damaged(modules["root"], tmp_path)], suffix=SUFFIX, sampling=GREEDY))
        )
    assert events == []


def test_eight_concurrent_requests_on_one_module_answer_as_if_alone(
    vllm: VLLMEngine, modules: dict[str, ModuleFile]
) -> None:
    root = modules["root"].load()
    suffixes = [(i, i + 1, i + 2) for i in range(100, 900, 100)]
    alone = [_plain(vllm, [root], s) for s in suffixes]
    vllm.evict()
    with ThreadPoolExecutor(len(suffixes)) as pool:
        together = list(pool.map(lambda s: _run(vllm, [root], s), suffixes))
    for mine, reference in zip(together, alone, strict=True):
        _assert_identical(mine, reference)
    assert sum(r[0].timings.restored_tokens for r in together) >= 200


def test_a_module_dropped_mid_request_lets_the_request_finish(vllm: VLLMEngine, modules: dict[str, ModuleFile]) -> None:
    chain = [modules["root"].load(), modules["child"].load()]
    stream = vllm.generate(GenerateRequest(chain=chain, suffix=SUFFIX, sampling=GREEDY))
    first = next(stream)
    assert vllm.drop("root200") is True
    _assert_identical([first, *stream], _plain(vllm, chain, SUFFIX))
    assert vllm.resident() == {}


class CountingSource:
    """A host-RAM module that counts how often the connector reads its rows."""

    def __init__(self, inner: KVSource) -> None:
        self.inner = inner
        self.reads = 0
        self._lock = threading.Lock()

    @property
    def metadata(self) -> ModuleMetadata:
        return self.inner.metadata

    @property
    def token_count(self) -> int:
        return self.inner.token_count

    @property
    def in_memory(self) -> bool:
        return True

    def tokens(self) -> list[int]:
        return self.inner.tokens()

    def read_rows(self, into: RowsTarget | None = None):  # type: ignore[no-untyped-def]
        with self._lock:
            self.reads += 1
        rows: list[LayerRows] = list(self.inner.read_rows(into))
        yield from rows


def test_a_preempted_request_is_restored_again_when_it_resumes(
    tiny_model: ModelFiles, modules: dict[str, ModuleFile]
) -> None:
    """Three blocks of KV memory: two requests on a 200-token module share its first block; when the first
    needs a fourth block to go on decoding, vLLM preempts the second, which is restored again when it resumes."""
    small = load_engine("vllm", tiny_model, "fp32", kv_capacity=3 * 128)
    try:
        source = CountingSource(modules["root"].load())
        long = SamplingParams(max_new_tokens=120, logprobs=1)
        requests = [GenerateRequest(chain=[source], suffix=s, sampling=long) for s in ((5, 6, 7), (8, 9, 10))]
        alone = [list(small.generate(r)) for r in requests]
        small.evict()
        source.reads = 0
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda r: list(small.generate(r)), requests))
        for mine, reference in zip(together, alone, strict=True):
            assert [e.token_id for e in mine] == [e.token_id for e in reference]
        assert source.reads == 3  # one restore each, and one more after the preemption
    finally:
        small.close()
