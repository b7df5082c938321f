"""Golden questions run against a freshly built module before it may be published."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from cag.canonical import GoldenCase
from cag.engine import Engine, KVCache, SamplingParams


@dataclass(frozen=True, kw_only=True)
class GoldenResult:
    question: str
    expect: tuple[str, ...]
    answer: str
    passed: bool


def run_golden(
    cases: Sequence[GoldenCase],
    *,
    engine: Engine,
    cache: KVCache,
    suffix_tokens: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    max_new_tokens: int,
    stop_sequences: frozenset[tuple[int, ...]] = frozenset(),
    on_result: Callable[[GoldenResult], None] | None = None,
) -> list[GoldenResult]:
    """Greedy-answer each question from the module held in `cache`; the cache is left as it was found.

    The answer ends at `max_new_tokens` or at a stop sequence (the compiler passes a paragraph break:
    golden facts must come in the answer's first paragraph).
    """
    module_end = cache.length
    sampling = SamplingParams(max_new_tokens=max_new_tokens, stop_sequences=stop_sequences)
    results = []
    for case in cases:
        tokens = list(engine.generate(suffix_tokens(case.question), cache, sampling))
        cache.truncate(module_end)
        answer = decode(tokens).strip()
        result = GoldenResult(question=case.question, expect=case.expect, answer=answer, passed=case.passes(answer))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def results_json(results: Sequence[GoldenResult]) -> str:
    return json.dumps([asdict(r) for r in results], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
