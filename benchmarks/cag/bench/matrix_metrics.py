"""The evaluation matrix's arithmetic (pure): one sample per question and baseline, aggregated per baseline into
the figures the report and the README carry, and the Markdown table of them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The baselines in the report's order.
BASELINES = ("cag", "rag", "full_context", "classifier_only", "fallback_only")


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One question answered by one baseline; times in seconds from the request to the first token / last one."""

    question_id: str
    question_type: str
    ttft_s: float | None  # None: no answer came (the error says why)
    latency_s: float | None
    prefill_tokens: int  # tokens the engine computed for the prompt (cached tokens not counted)
    answer: str
    correct: bool
    route: str | None  # what the baseline routed to ("none": no module); None where it does not route
    route_correct: bool | None
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class BaselineSummary:
    """`ttft_*` and `latency_p50_s` over the answered questions; `accuracy` over all of them (no answer is wrong);
    `prefill_tokens` the mean per answered request; `route_accuracy` None where the baseline does not route."""

    questions: int
    answered: int
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    latency_p50_s: float | None
    prefill_tokens: float | None
    accuracy: float
    route_accuracy: float | None
    accuracy_by_type: dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (q in (0, 100]): a value that was measured, never an interpolation."""
    if not values or not 0 < q <= 100:
        raise ValueError("percentile needs values and q in (0, 100]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered) / 100) - 1)]


def summarize(samples: Sequence[Sample]) -> BaselineSummary:
    if not samples:
        raise ValueError("a baseline with no samples has no summary")
    answered = [s for s in samples if s.ttft_s is not None and s.latency_s is not None]
    ttfts = [s.ttft_s for s in answered if s.ttft_s is not None]
    latencies = [s.latency_s for s in answered if s.latency_s is not None]
    routed = [s.route_correct for s in samples if s.route_correct is not None]
    by_type: dict[str, list[bool]] = {}
    for s in samples:
        by_type.setdefault(s.question_type, []).append(s.correct)
    return BaselineSummary(
        questions=len(samples),
        answered=len(answered),
        ttft_p50_s=statistics.median(ttfts) if ttfts else None,
        ttft_p95_s=percentile(ttfts, 95) if ttfts else None,
        latency_p50_s=statistics.median(latencies) if latencies else None,
        prefill_tokens=statistics.fmean(s.prefill_tokens for s in answered) if answered else None,
        accuracy=_share([s.correct for s in samples]),
        route_accuracy=_share(routed) if routed else None,
        accuracy_by_type={kind: _share(flags) for kind, flags in sorted(by_type.items())},
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def markdown_table(summaries: Mapping[str, BaselineSummary]) -> str:
    """One row per baseline (in BASELINES order, those present), times in milliseconds."""
    head = (
        "| baseline | TTFT p50 ms | TTFT p95 ms | latency p50 ms | prefill tokens / request | accuracy "
        "| route accuracy | answered |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name in (b for b in BASELINES if b in summaries):
        s = summaries[name]
        cells = (
            f"`{name}`",
            _ms(s.ttft_p50_s),
            _ms(s.ttft_p95_s),
            _ms(s.latency_p50_s),
            "-" if s.prefill_tokens is None else f"{s.prefill_tokens:,.0f}",
            f"{s.accuracy:.1%}",
            "-" if s.route_accuracy is None else f"{s.route_accuracy:.1%}",
            f"{s.answered}/{s.questions}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.0f}"
