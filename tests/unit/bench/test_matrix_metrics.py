"""The evaluation matrix's aggregation: percentiles, per-baseline summaries and the Markdown table."""

from __future__ import annotations

import pytest

from cag.bench.matrix_metrics import BaselineSummary, Sample, markdown_table, percentile, ratio, summarize


def sample(
    ttft: float | None, *, correct: bool = True, route_correct: bool | None = True, kind: str = "single_section",
    prefill: int = 100,
) -> Sample:  # fmt: skip
    return Sample(
        question_id="q", question_type=kind, ttft_s=ttft, latency_s=None if ttft is None else ttft * 2,
        prefill_tokens=prefill, answer="", correct=correct, route="billing", route_correct=route_correct,
    )  # fmt: skip


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1 .. 20
    assert percentile(values, 95) == 19.0
    assert percentile(values, 50) == 10.0
    assert percentile([3.0], 95) == 3.0
    with pytest.raises(ValueError, match="needs values"):
        percentile([], 50)


def test_summary_times_answered_questions_and_counts_unanswered_as_wrong() -> None:
    rows = [sample(0.1), sample(0.3, correct=False), sample(0.2), sample(None, correct=False, route_correct=None)]
    s = summarize(rows)
    assert (s.questions, s.answered) == (4, 3)
    assert s.ttft_p50_s == 0.2 and s.ttft_p95_s == 0.3 and s.latency_p50_s == 0.4
    assert s.accuracy == 0.5
    assert s.route_accuracy == 1.0  # the unanswered question had no routing to judge
    assert s.prefill_tokens == 100


def test_summary_splits_accuracy_by_question_type_and_leaves_route_accuracy_out_without_routing() -> None:
    rows = [
        sample(0.1, kind="two_section", correct=False, route_correct=None),
        sample(0.1, kind="two_section", route_correct=None),
        sample(0.1, kind="not_covered", route_correct=None),
    ]
    s = summarize(rows)
    assert s.accuracy_by_type == {"not_covered": 1.0, "two_section": 0.5}
    assert s.route_accuracy is None


def test_ratio_is_none_without_both_figures() -> None:
    assert ratio(1.0, 0.2) == 5.0
    assert ratio(None, 0.2) is None and ratio(1.0, 0.0) is None


def test_markdown_table_has_a_row_per_baseline_in_report_order() -> None:
    s = summarize([sample(0.25, prefill=1234)])
    empty = BaselineSummary(
        questions=2, answered=0, ttft_p50_s=None, ttft_p95_s=None, latency_p50_s=None, prefill_tokens=None,
        accuracy=0.0, route_accuracy=None, accuracy_by_type={},
    )  # fmt: skip
    lines = markdown_table({"rag": s, "cag": s, "fallback_only": empty}).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["`cag`", "`rag`", "`fallback_only`"]
    assert "| 250 | 250 | 500 | 1,234 | 100.0% | 100.0% | 1/1 |" in lines[2]
    assert lines[4].endswith("| - | - | - | - | 0.0% | - | 0/2 |")
