"""`cag bench cacheweaver`'s workload and oracle without a model: a stream that repeats exactly, bursts of
overlapping evidence, an oracle that finds the longest cached prefix, and prompts built from the chosen order."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from cag.bench.cacheweaver import Stream, cache_chunks_needed, serve
from cag.bench.cacheweaver_plot import plot_ttft_cdf
from cag.bench.cacheweaver_workload import (
    CHUNKS_PER_TOPIC,
    TOPICS,
    K,
    OracleOrder,
    Question,
    ServedPrefixes,
    corpus,
    questions,
)
from cag.engine import GenerateRequest
from cag.fallback.core.evidence_order import EvidenceOrder, EvidenceTrie, RetrievalOrder

CHUNKS = corpus(0)


def test_the_corpus_and_the_stream_repeat_exactly_for_a_seed() -> None:
    assert corpus(0) == CHUNKS
    assert questions(CHUNKS, 40, 1) == questions(CHUNKS, 40, 1)
    assert questions(CHUNKS, 40, 1) != questions(CHUNKS, 40, 2)


def test_the_corpus_has_distinct_chunks_for_every_topic() -> None:
    assert len(CHUNKS) == len(TOPICS) * CHUNKS_PER_TOPIC
    assert len({c.chunk_id for c in CHUNKS}) == len({c.text for c in CHUNKS}) == len(CHUNKS)


def test_questions_retrieve_k_distinct_chunks_in_bursts_of_overlapping_evidence() -> None:
    asked = questions(CHUNKS, 200, 1)
    assert len(asked) == 200
    assert all(len(set(q.retrieved)) == K for q in asked)
    same_topic = [(a, b) for a, b in itertools.pairwise(asked) if a.topic == b.topic]
    assert len(same_topic) > len(asked) // 2  # bursts
    overlap = [len(set(a.retrieved) & set(b.retrieved)) for a, b in same_topic]
    assert sum(overlap) / len(overlap) >= K - 1.5
    reordered = [a for a, b in same_topic if set(a.retrieved) == set(b.retrieved) and a.retrieved != b.retrieved]
    assert reordered  # the same evidence, retrieved in another order


ids = st.lists(st.sampled_from("abcdef"), min_size=1, max_size=5, unique=True)


@given(history=st.lists(ids, max_size=12), retrieved=ids)
def test_the_oracle_puts_first_the_longest_cached_prefix_of_any_order(
    history: list[list[str]], retrieved: list[str]
) -> None:
    oracle, trie, cache = OracleOrder(), EvidenceTrie(), ServedPrefixes()
    for order in history:
        oracle.served(order)
        trie.served(order)
        cache.add(order)
    best = max(cache.cached(p) for p in itertools.permutations(retrieved))
    chosen = oracle.order(retrieved)
    assert sorted(chosen) == sorted(retrieved)
    assert cache.cached(chosen) == best
    assert cache.cached(trie.order(retrieved)) <= best


@dataclass
class RecordingEngine:
    """Answers one token at once and keeps the prompts it was given."""

    prompts: list[list[int]] = field(default_factory=list)
    evictions: int = 0

    def generate(self, request: GenerateRequest) -> Iterator[object]:
        self.prompts.append(list(request.suffix))
        yield object()

    def evict(self) -> None:
        self.evictions += 1


def test_a_run_prompts_with_the_chosen_order_then_the_question_and_counts_cached_chunks() -> None:
    asked = questions(CHUNKS, 12, 1)
    tokens = {c.chunk_id: [i * 10 + j for j in range(3)] for i, c in enumerate(CHUNKS)}
    stream = Stream(questions=asked, chunk_tokens=tokens, question_tokens=[[-i] for i in range(len(asked))])
    engine, trie, seen = RecordingEngine(), EvidenceTrie(), ServedPrefixes()
    run = serve(engine, stream, "trie", trie, lambda _: None)
    assert engine.evictions == 1
    replay, cached = EvidenceTrie(), 0
    for i, (q, prompt) in enumerate(zip(asked, engine.prompts, strict=True)):
        order = replay.order(q.retrieved)
        replay.served(order)
        assert prompt == [t for c in order for t in tokens[c]] + [-i]
        cached += seen.cached(order)
        seen.add(order)
    assert run.cached_chunk_fraction == cached / (K * len(asked))
    assert run.overhead_median_us > 0


def test_the_engine_is_sized_for_every_prefix_any_ordering_leaves_cached() -> None:
    asked = questions(CHUNKS, 30, 1)
    left = [_prefixes_left(asked, ordering) for ordering in (RetrievalOrder(), EvidenceTrie(), OracleOrder())]
    assert cache_chunks_needed(asked, capacity_chunks=1000) == max(left)


def _prefixes_left(asked: list[Question], ordering: EvidenceOrder) -> int:
    cache = ServedPrefixes()
    for q in asked:
        order = ordering.order(q.retrieved)
        ordering.served(order)
        cache.add(order)
    return len(cache)


def test_the_ttft_plot_is_written_as_a_png(tmp_path: Path) -> None:
    out = plot_ttft_cdf({"retrieval": [0.9, 1.1, 0.4], "trie": [0.2, 0.3, 0.5]}, tmp_path / "ttft.png", "title")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
