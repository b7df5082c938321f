"""The promoted knowledge source: evidence grouped per document, and golden cases only from grounded facts."""

from __future__ import annotations

from cag.fallback.core.promotion_source import EvidenceChunk, golden_cases, grounded_facts, source_files


def chunk(chunk_id: str, path: str, start: int, text: str, source: str = "file:///kb/billing") -> EvidenceChunk:
    return EvidenceChunk(
        chunk_id=chunk_id,
        source_uri=source,
        path=path,
        title=f"T {path}",
        start=start,
        end=start + len(text),
        text=text,
    )


def test_chunks_are_grouped_per_document_in_offset_order_overlaps_joined_and_gaps_kept_as_paragraphs() -> None:
    files = source_files(
        [
            chunk("b", "refunds.md", 9, "paid in 10 days."),  # 9..25
            chunk("a", "refunds.md", 0, "Refunds: paid in 10"),  # 0..19, overlaps b by 10 characters
            chunk("c", "faq/payments.md", 0, "We take PayPal."),
            chunk("d", "refunds.md", 0, "Refunds: paid"),  # inside a: dropped
            chunk("e", "refunds.md", 40, "Gift cards are final."),  # after a gap: a paragraph of its own
        ]
    )
    assert [f.name for f in files] == ["01-payments.md", "02-refunds.md"]
    assert files[0].text == "---\ntitle: T faq/payments.md\n---\nWe take PayPal.\n"
    assert files[1].text == "---\ntitle: T refunds.md\n---\nRefunds: paid in 10 days.\n\nGift cards are final.\n"


def test_the_same_path_in_two_sources_gives_two_files() -> None:
    files = source_files([chunk("a", "x.md", 0, "one", "s3://b/one"), chunk("b", "x.md", 0, "two", "s3://b/two")])
    assert [f.name for f in files] == ["01-x.md", "02-x.md"]


def test_grounded_facts_are_maximal_shared_runs_of_at_least_three_words() -> None:
    evidence = "Refunds are accepted within 30 days of delivery. The restocking fee is 15%."
    answer = "Sure! Refunds are accepted within 30 days, and the restocking fee is 15%. Ok then we go"
    assert grounded_facts(answer, evidence) == ["Refunds are accepted within 30", "the restocking fee is 15%."]


def test_an_answer_sharing_no_run_with_the_evidence_gives_no_golden_case() -> None:
    evidence = "Refunds are accepted within 30 days of delivery."
    cases = golden_cases(
        [("refund window?", "Refunds are accepted within 30 days of delivery."), ("other?", "zq xv refunds are")],
        evidence,
    )
    assert cases == [{"question": "refund window?", "expect": ["Refunds are accepted within 30 days of delivery."]}]


def test_the_reviewers_facts_check_the_queries_whose_answers_hold_none() -> None:
    evidence = "Refunds are accepted within 30 days of delivery."
    asked = [("refund window?", "Refunds are accepted within 30 days."), ("other?", "zq xv")]
    assert golden_cases(asked, evidence, reviewer_facts=["30 days"]) == [
        {"question": "refund window?", "expect": ["Refunds are accepted within 30"]},
        {"question": "other?", "expect": ["30 days"]},
    ]
