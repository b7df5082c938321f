"""Golden questions run against a freshly built module before it may be published."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from cag.canonical import GoldenCase, compact_json
from cag.engine import Engine, GenerateRequest, ModuleRows, SamplingParams
from cag.identifiers import is_unstorable
from cag.kvmodule import KVSource, LoadedModule
from cag.metadata import ModuleMetadata


@dataclass(frozen=True, kw_only=True)
class GoldenResult:
    question: str
    expect: tuple[str, ...]
    answer: str
    passed: bool


def draft_module(metadata: ModuleMetadata, rows: ModuleRows, tokens: Sequence[int]) -> LoadedModule:
    """The module being built, held in host RAM, so golden questions run on it before it is written."""
    ids = torch.tensor(list(tokens), dtype=torch.int32)  # [tokens]
    return LoadedModule(metadata=metadata, k=rows.k, v=rows.v, token_ids=ids)


def run_golden(
    cases: Sequence[GoldenCase],
    *,
    engine: Engine,
    chain: Sequence[KVSource],
    suffix_tokens: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    max_new_tokens: int,
    stop_sequences: frozenset[tuple[int, ...]] = frozenset(),
    on_result: Callable[[GoldenResult], None] | None = None,
) -> list[GoldenResult]:
    """Greedy-answer each question on top of `chain` (the parents, then the module being built).

    The answer ends at `max_new_tokens` or at a stop sequence (the compiler passes a paragraph break:
    golden facts must come in the answer's first paragraph). The engine restores the chain for the
    first question and reuses it for the others.
    """
    sampling = SamplingParams(max_new_tokens=max_new_tokens, stop_sequences=stop_sequences)
    results = []
    for case in cases:
        request = GenerateRequest(chain=chain, suffix=suffix_tokens(case.question), sampling=sampling)
        tokens = [event.token_id for event in engine.generate(request)]
        answer = decode(tokens).strip()
        result = GoldenResult(
            question=case.question, expect=case.expect, answer=transcript(answer), passed=case.passes(answer)
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def transcript(answer: str) -> str:
    """The answer as recorded (module header, registry, logs): control characters other than tab and newline
    written as `\\xNN`, since a model may emit any (a carriage return, say) and stored text may not hold them."""
    return "".join(f"\\x{ord(c):02x}" if is_unstorable(c) else c for c in answer)


def results_json(results: Sequence[GoldenResult]) -> str:
    return compact_json([asdict(r) for r in results])
