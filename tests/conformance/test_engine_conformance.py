"""What every engine promises, run against each engine kind (the torch reference engine and vLLM).

An engine owns its KV memory and answers requests (chain + suffix + sampling) as a token stream: the
answer from restored modules is the answer of a full prefill of the same tokens, whatever the engine
held before, and a module that does not verify never produces a token.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cag.engine import Engine, FinishReason, GenerateRequest, SamplingParams, TokenEvent, load_engine
from cag.errors import (
    ChainError,
    ContextWindowExceededError,
    KVCacheFullError,
    ModuleCorruptedError,
    ModuleMismatchError,
)
from cag.kvmodule import KVSource, ModuleFile
from cag.kvmodule.chain import LayerRows, RowsTarget
from cag.metadata import ModuleMetadata
from cag.models import ModelFiles

EngineFactory = Callable[[ModelFiles, int | None], Engine]


def _torch(model: ModelFiles, kv_capacity: int | None) -> Engine:
    return load_engine("torch", model, "fp32", kv_capacity=kv_capacity)


def _vllm(model: ModelFiles, kv_capacity: int | None) -> Engine:
    return load_engine("vllm", model, "fp32", kv_capacity=kv_capacity)


FACTORIES: dict[str, EngineFactory] = {"torch": _torch, "vllm": _vllm}
SUFFIX = (300, 301, 302, 7, 8, 9, 1000)
OTHER_SUFFIX = (42, 43, 44, 45)
GREEDY = SamplingParams(max_new_tokens=12, logprobs=5)
# Module rows are attended segment by segment (merged by log-sum-exp): the sums run in another order than a
# full prefill's, and the tiny model's wide init amplifies fp32 rounding to ~1e-4 in log-probabilities.
LOGPROB_TOLERANCE = 5e-4

MakeEngine = Callable[..., Engine]


@pytest.fixture(params=sorted(FACTORIES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_engine(kind: str, tiny_model: ModelFiles) -> MakeEngine:
    """A fresh engine of the kind under test: make_engine(kv_capacity=None)."""
    return lambda kv_capacity=None: FACTORIES[kind](tiny_model, kv_capacity)


@pytest.fixture
def engine(kind: str, make_engine: MakeEngine, request: pytest.FixtureRequest) -> Engine:
    """A fresh torch engine; vLLM's engine takes seconds to start, so one serves the session, emptied per test."""
    if kind != "vllm":
        return make_engine()
    shared: Engine = request.getfixturevalue("tiny_vllm")
    shared.evict()
    return shared


def _whole_blocks(engine: Engine, tokens: int) -> int:
    """Of `tokens` chain tokens, those an engine keeps resident between requests (whole reuse blocks)."""
    return tokens // engine.reuse_block_size * engine.reuse_block_size


@pytest.fixture
def chain(tiny_chain: tuple[Path, Path]) -> list[ModuleFile]:
    return [ModuleFile.open(p) for p in tiny_chain]


def _run(
    engine: Engine, chain: Sequence[KVSource], suffix: Sequence[int], sampling: SamplingParams = GREEDY
) -> list[TokenEvent]:
    return list(engine.generate(GenerateRequest(chain=chain, suffix=suffix, sampling=sampling)))


def _full_prefill(engine: Engine, chain: Sequence[ModuleFile], suffix: Sequence[int]) -> list[TokenEvent]:
    prefix = [t for m in chain for t in m.token_ids()]
    return _run(engine, (), [*prefix, *suffix])


def _assert_same_answer(ours: list[TokenEvent], reference: list[TokenEvent]) -> None:
    """Token for token, and the top log-probabilities of every step close."""
    assert [e.token_id for e in ours] == [e.token_id for e in reference]
    for mine, theirs in zip(ours, reference, strict=True):
        assert [t for t, _ in mine.logprobs] == [t for t, _ in theirs.logprobs]
        for (_, a), (_, b) in zip(mine.logprobs, theirs.logprobs, strict=True):
            assert a == pytest.approx(b, abs=LOGPROB_TOLERANCE)


def _damaged_copy(module: Path, tmp_path: Path, where: float) -> ModuleFile:
    """A copy of `module` with one tensor byte flipped at fraction `where` of its data; the header verifies."""
    copy = tmp_path / module.name
    shutil.copyfile(module, copy)
    opened = ModuleFile.open(copy)
    offset = opened.data_offset + int(opened.data_bytes * where)
    with copy.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    return opened


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("tier", ["file", "ram"])
@pytest.mark.parametrize("depth", [1, 2], ids=["root", "root+child"])
def test_answer_from_modules_is_the_answer_of_a_full_prefill(
    engine: Engine, chain: list[ModuleFile], tier: str, depth: int
) -> None:
    modules = chain[:depth]
    sources: list[KVSource] = list(modules) if tier == "file" else [m.load() for m in modules]
    ours = _run(engine, sources, SUFFIX)
    reference = _full_prefill(engine, modules, SUFFIX)
    assert len(ours) == GREEDY.max_new_tokens
    _assert_same_answer(ours, reference)


def test_chain_given_in_any_order_is_restored_root_first(engine: Engine, chain: list[ModuleFile]) -> None:
    reference = _full_prefill(engine, chain, SUFFIX)
    _assert_same_answer(_run(engine, list(reversed(chain)), SUFFIX), reference)


def test_prefill_module_gives_the_rows_of_a_full_prefill(engine: Engine, chain: list[ModuleFile]) -> None:
    """What compilation stores: the K/V of new tokens on top of a chain (restored), as if prefilled whole."""
    tokens = list(range(500, 540))
    prefix = [t for m in chain for t in m.token_ids()]
    on_top = engine.prefill_module(chain, tokens, chunk_size=16)
    whole = engine.prefill_module([], [*prefix, *tokens])
    shape = engine.kv_shape
    assert tuple(on_top.k.shape) == (shape.layers, len(tokens), shape.kv_heads, shape.head_dim)
    assert on_top.token_count == len(tokens)
    for mine, theirs in ((on_top.k, whole.k[:, len(prefix) :]), (on_top.v, whole.v[:, len(prefix) :])):
        assert mine.sub(theirs).abs().max().item() < 1e-4


def test_rows_handed_out_are_the_callers(engine: Engine, chain: list[ModuleFile]) -> None:
    rows = engine.prefill_module(chain, [5, 6, 7])
    before = rows.k.clone()
    _run(engine, (), list(range(100, 160)))  # the engine reuses its memory for the next request
    assert rows.k.equal(before)


# ---------------------------------------------------------------- reuse


def test_consecutive_requests_on_one_chain_reuse_it_and_stay_exact(engine: Engine, chain: list[ModuleFile]) -> None:
    first_reference = _full_prefill(engine, chain, SUFFIX)
    second_reference = _full_prefill(engine, chain, OTHER_SUFFIX)
    chain_tokens = sum(m.token_count for m in chain)

    first = _run(engine, chain, SUFFIX)
    second = _run(engine, chain, OTHER_SUFFIX)
    _assert_same_answer(first, first_reference)
    _assert_same_answer(second, second_reference)  # the first request's suffix and answer left no trace
    assert first[-1].timings.restored_tokens == chain_tokens
    assert second[-1].timings.reused_tokens == _whole_blocks(engine, chain_tokens)
    assert second[-1].timings.restored_tokens == chain_tokens - _whole_blocks(engine, chain_tokens)


def test_a_chain_extending_the_resident_one_restores_only_the_rest(engine: Engine, chain: list[ModuleFile]) -> None:
    root, child = chain
    reference = _full_prefill(engine, chain, SUFFIX)
    _run(engine, [root], OTHER_SUFFIX)
    extended = _run(engine, chain, SUFFIX)
    _assert_same_answer(extended, reference)
    assert (
        extended[0].timings.reused_tokens + extended[0].timings.restored_tokens == root.token_count + child.token_count
    )
    assert extended[0].timings.restored_tokens >= child.token_count


def test_the_parent_alone_after_its_child_is_exact(engine: Engine, chain: list[ModuleFile]) -> None:
    reference = _full_prefill(engine, chain[:1], SUFFIX)
    _run(engine, chain, OTHER_SUFFIX)
    _assert_same_answer(_run(engine, chain[:1], SUFFIX), reference)


def test_a_stream_left_open_does_not_disturb_the_next_request(engine: Engine, chain: list[ModuleFile]) -> None:
    reference = _full_prefill(engine, chain, OTHER_SUFFIX)
    abandoned = engine.generate(GenerateRequest(chain=chain, suffix=SUFFIX, sampling=GREEDY))
    next(abandoned)
    _assert_same_answer(_run(engine, chain, OTHER_SUFFIX), reference)


def test_evict_makes_the_next_request_restore(engine: Engine, chain: list[ModuleFile]) -> None:
    _run(engine, chain, SUFFIX)
    engine.evict()
    again = _run(engine, chain, SUFFIX)
    assert again[0].timings.reused_tokens == 0
    assert again[0].timings.restored_tokens == sum(m.token_count for m in chain)


# ---------------------------------------------------------------- the stream


def test_the_last_event_says_why_the_answer_ended(engine: Engine, chain: list[ModuleFile]) -> None:
    events = _run(engine, chain, SUFFIX)
    assert [e.index for e in events] == list(range(len(events)))
    assert [e.finish_reason for e in events] == [None] * (len(events) - 1) + [FinishReason.LENGTH]
    stop_at_first = SamplingParams(max_new_tokens=12, stop_token_ids=frozenset({events[0].token_id}))
    stopped = _run(engine, chain, SUFFIX, stop_at_first)
    assert [(e.token_id, e.finish_reason) for e in stopped] == [(events[0].token_id, FinishReason.STOP)]


def test_timings_are_reported(engine: Engine, chain: list[ModuleFile]) -> None:
    events = _run(engine, chain, SUFFIX)
    first, last = events[0].timings, events[-1].timings
    assert 0 < first.prefill_s <= first.ttft_s
    assert first.restore_s > 0
    assert last.ttft_s == first.ttft_s
    assert last.decode_s >= first.decode_s >= 0
    assert [e.timings.decode_s for e in events] == sorted(e.timings.decode_s for e in events)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("where", [0.01, 0.5, 0.98], ids=["first-layer", "middle", "last-layer"])
@pytest.mark.parametrize("damaged", ["root", "child"])
def test_a_corrupt_source_fails_the_request_before_any_token(
    engine: Engine, chain: list[ModuleFile], tiny_chain: tuple[Path, Path], tmp_path: Path, where: float, damaged: str
) -> None:
    root, child = chain
    if damaged == "root":
        sources: list[KVSource] = [_damaged_copy(tiny_chain[0], tmp_path, where), child]
    else:
        _run(engine, [root], OTHER_SUFFIX)  # the root is resident: only the damaged child is read
        sources = [root, _damaged_copy(tiny_chain[1], tmp_path, where)]
    tokens: list[TokenEvent] = []
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        tokens.extend(engine.generate(GenerateRequest(chain=sources, suffix=SUFFIX, sampling=GREEDY)))
    assert tokens == []
    # The engine is not poisoned: the healthy chain still answers exactly.
    _assert_same_answer(_run(engine, chain, SUFFIX), _full_prefill(engine, chain, SUFFIX))


def test_a_damaged_copy_of_a_resident_module_never_serves_its_damaged_rows(
    engine: Engine, chain: list[ModuleFile], tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    """Residency is by content (checksums). An engine holding the module whole serves its verified rows and does
    not read the damaged file; one that must restore the module's last partial block reads the file again and
    refuses it before any token."""
    reference = _run(engine, chain[:1], SUFFIX)
    damaged = _damaged_copy(tiny_chain[0], tmp_path, 0.5)
    if _whole_blocks(engine, chain[0].token_count) == chain[0].token_count:
        again = _run(engine, [damaged], SUFFIX)
        _assert_same_answer(again, reference)
        assert again[0].timings.restored_tokens == 0
    else:
        tokens: list[TokenEvent] = []
        with pytest.raises(ModuleCorruptedError, match="checksum"):
            tokens.extend(engine.generate(GenerateRequest(chain=[damaged], suffix=SUFFIX, sampling=GREEDY)))
        assert tokens == []


def test_prefill_module_on_a_corrupt_parent_fails(
    engine: Engine, tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        engine.prefill_module([_damaged_copy(tiny_chain[0], tmp_path, 0.5)], [5, 6, 7])


def test_more_tokens_than_the_context_window_is_a_typed_error(engine: Engine, chain: list[ModuleFile]) -> None:
    chain_tokens = sum(m.token_count for m in chain)
    too_long = [11] * (engine.context_window - chain_tokens + 1)
    for sources, suffix in (((), [11] * (engine.context_window + 1)), (chain, too_long)):
        tokens: list[TokenEvent] = []
        with pytest.raises(ContextWindowExceededError):
            tokens.extend(engine.generate(GenerateRequest(chain=sources, suffix=suffix, sampling=GREEDY)))
        assert tokens == []
    with pytest.raises(ContextWindowExceededError):
        engine.prefill_module(chain, too_long)


def test_more_tokens_than_the_kv_memory_is_kv_cache_full(make_engine: MakeEngine, chain: list[ModuleFile]) -> None:
    chain_tokens = sum(m.token_count for m in chain)
    engine = make_engine(kv_capacity=chain_tokens + len(SUFFIX) + 2)
    assert engine.kv_capacity == chain_tokens + len(SUFFIX) + 2
    with pytest.raises(KVCacheFullError):
        _run(engine, chain, [*SUFFIX, 1, 2, 3])
    # An answer that runs into the end of the KV memory stops there.
    events = _run(engine, chain, SUFFIX, SamplingParams(max_new_tokens=50))
    assert 1 <= len(events) <= 3
    assert events[-1].finish_reason is FinishReason.LENGTH


def test_a_child_without_its_parent_is_refused(engine: Engine, chain: list[ModuleFile]) -> None:
    with pytest.raises(ChainError, match="parent"):
        _run(engine, chain[1:], SUFFIX)


def test_a_module_built_for_another_engine_is_refused(engine: Engine, chain: list[ModuleFile]) -> None:
    import dataclasses

    root = chain[0]
    other = dataclasses.replace(root, metadata=dataclasses.replace(root.metadata, engine_fingerprint="llama;layers=99"))
    with pytest.raises(ModuleMismatchError, match="engine_fingerprint"):
        _run(engine, [other], SUFFIX)


# ---------------------------------------------------------------- sharing and residency


class GatedSource:
    """A module source that counts its reads and holds its rows back until `gate` opens."""

    def __init__(self, inner: ModuleFile, gate: threading.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.reads = 0

    @property
    def metadata(self) -> ModuleMetadata:
        return self.inner.metadata

    @property
    def token_count(self) -> int:
        return self.inner.token_count

    @property
    def in_memory(self) -> bool:
        return False

    def tokens(self) -> list[int]:
        return self.inner.tokens()

    def read_rows(self, into: RowsTarget | None = None) -> Iterator[LayerRows]:
        self.reads += 1
        assert self.gate.wait(30), "the test never opened the gate"
        yield from self.inner.read_rows(into)


def test_concurrent_requests_on_one_module_answer_as_if_alone(engine: Engine, chain: list[ModuleFile]) -> None:
    suffixes = [SUFFIX, OTHER_SUFFIX, (5, 6, 7), (900, 901)]
    alone = [_run(engine, chain, s) for s in suffixes]
    with ThreadPoolExecutor(len(suffixes)) as pool:
        together = list(pool.map(lambda s: _run(engine, chain, s), suffixes))
    for mine, reference in zip(together, alone, strict=True):
        _assert_same_answer(mine, reference)


def test_requests_needing_a_missing_module_share_one_restore(tiny_model: ModelFiles, chain: list[ModuleFile]) -> None:
    """The torch engine restores a module once for every request that needs it meanwhile. (vLLM's connector
    restores per request what its prefix cache lacks; single flight of host copies is the cache pool's.)"""
    engine = _torch(tiny_model, None)
    reference = _full_prefill(engine, chain[:1], SUFFIX)
    gate = threading.Event()
    source = GatedSource(chain[0], gate)
    free = engine.kv_tokens_free
    own = len(SUFFIX) + GREEDY.max_new_tokens
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(_run, engine, [source], SUFFIX) for _ in range(2)]
        # Both requests are placed (the module's rows and both requests' own rows are counted) before a row lands.
        placed = free - chain[0].token_count - 2 * own
        deadline = time.monotonic() + 30
        while engine.kv_tokens_free != placed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.kv_tokens_free == placed
        gate.set()
        results = [a.result() for a in answers]
    assert source.reads == 1
    for events in results:
        _assert_same_answer(events, reference)
    assert engine.resident() == {chain[0].metadata.module_id: chain[0].token_count}


def test_load_resident_and_drop(engine: Engine, chain: list[ModuleFile]) -> None:
    engine.load(chain)
    assert engine.resident() == {m.metadata.module_id: m.token_count for m in chain}
    root, child = chain
    assert engine.drop(child.metadata.module_id) is True
    assert engine.drop(child.metadata.module_id) is False
    assert engine.resident() == {root.metadata.module_id: root.token_count}
    again = _run(engine, chain, SUFFIX)
    kept = _whole_blocks(engine, root.token_count)
    total = root.token_count + child.token_count
    assert (again[0].timings.reused_tokens, again[0].timings.restored_tokens) == (kept, total - kept)
    _assert_same_answer(again, _full_prefill(engine, chain, SUFFIX))


def test_a_module_dropped_while_a_request_runs_on_it_lets_that_request_finish(
    engine: Engine, chain: list[ModuleFile]
) -> None:
    reference = _full_prefill(engine, chain, SUFFIX)
    stream = engine.generate(GenerateRequest(chain=chain, suffix=SUFFIX, sampling=GREEDY))
    first = next(stream)
    for module in chain:
        engine.drop(module.metadata.module_id)
    assert engine.resident() == {}
    _assert_same_answer([first, *stream], reference)


def test_a_module_that_fails_verification_does_not_stay(
    engine: Engine, chain: list[ModuleFile], tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModuleCorruptedError):
        engine.load([_damaged_copy(tiny_chain[0], tmp_path, 0.5)])
    assert engine.resident() == {}
    assert engine.kv_tokens_free == engine.kv_capacity
