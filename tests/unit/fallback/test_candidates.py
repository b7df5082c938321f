"""Clustering of served fallbacks into candidates, and the review state machine, on constructed vectors."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from cag.errors import InvalidFieldError
from cag.fallback.core.candidates import (
    CandidateNotReviewableError,
    CandidateState,
    ClusteringPolicy,
    Review,
    ServedFallback,
    absorb,
    closest,
    cosine,
    evidence_overlap,
    promoted,
    reviewed,
    start,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
POLICY = ClusteringPolicy(similarity=0.9, evidence_overlap=0.5, propose_at=3)


def served(
    query: str,
    embedding: tuple[float, ...],
    evidence: tuple[str, ...] = ("c1", "c2"),
    *,
    minutes: int = 0,
    tenant: str = "acme",
    answer: str = "an answer",
) -> ServedFallback:
    return ServedFallback(
        event_id=f"e-{query}-{minutes}",
        tenant_id=tenant,
        query=query,
        embedding=embedding,
        evidence_ids=evidence,
        answer=answer,
        served_at=T0 + timedelta(minutes=minutes),
    )


def review(*, approved: bool, route: str = "refunds") -> Review:
    return Review(
        approved=approved, reviewer="alice", actor="user:alice", route=route if approved else "", comment="", at=T0
    )


def test_cosine_and_overlap_are_exact_on_constructed_values() -> None:
    assert cosine((1.0, 0.0), (3.0, 0.0)) == pytest.approx(1.0)
    assert cosine((1.0, 0.0), (0.0, 2.0)) == pytest.approx(0.0)
    assert cosine((1.0, 1.0), (1.0, 0.0)) == pytest.approx(0.5**0.5)
    assert evidence_overlap(("a", "b"), ("b", "c", "d")) == pytest.approx(0.5)
    assert evidence_overlap(("a",), ("a", "b", "c")) == pytest.approx(1.0)
    assert evidence_overlap((), ("a",)) == 0.0


def test_a_zero_or_mismatched_embedding_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="non-zero"):
        cosine((0.0, 0.0), (1.0, 0.0))
    with pytest.raises(InvalidFieldError, match="3 dimensions"):
        cosine((1.0, 0.0), (1.0, 0.0, 0.0))


def test_a_cluster_is_proposed_when_its_count_reaches_the_threshold() -> None:
    c = start("k1", served("how do refunds work", (1.0, 0.0)), POLICY)
    assert (c.state, c.count) == (CandidateState.GATHERING, 1)
    c = absorb(c, served("how do refunds work", (0.99, 0.1), minutes=1), POLICY)
    assert (c.state, c.count) == (CandidateState.GATHERING, 2)
    c = absorb(c, served("refund policy?", (0.98, 0.05), minutes=2), POLICY)
    assert (c.state, c.count) == (CandidateState.PROPOSED, 3)
    assert (c.first_seen, c.last_seen) == (T0, T0 + timedelta(minutes=2))


def test_a_similar_query_with_overlapping_evidence_joins_the_most_similar_cluster() -> None:
    near = start("near", served("q1", (1.0, 0.0, 0.0)), POLICY)
    nearer = start("nearer", served("q2", (0.95, 0.3, 0.0)), POLICY)
    query = served("q3", (0.96, 0.28, 0.0), ("c2", "c3"))
    assert cosine(near.centroid_sum, query.embedding) >= 0.9
    assert closest([near, nearer], query, POLICY) is nearer


def test_a_dissimilar_query_or_other_evidence_or_other_tenant_starts_its_own_cluster() -> None:
    c = start("k1", served("q1", (1.0, 0.0)), POLICY)
    assert closest([c], served("far", (0.5, 0.87)), POLICY) is None  # cosine 0.5
    assert closest([c], served("q1", (1.0, 0.0), ("c7", "c8", "c9")), POLICY) is None  # no shared chunk
    assert closest([c], served("q1", (1.0, 0.0), tenant="globex"), POLICY) is None


def test_evidence_overlap_at_the_threshold_joins_and_below_it_does_not() -> None:
    c = start("k1", served("q1", (1.0, 0.0), ("c1", "c2", "c3")), POLICY)
    assert closest([c], served("q1", (1.0, 0.0), ("c1", "c7")), POLICY) is c  # 1 of 2: 0.5
    assert closest([c], served("q1", (1.0, 0.0), ("c1", "c7", "c8")), POLICY) is None  # 1 of 3: 0.33


def test_representative_queries_are_most_frequent_first_and_count_spelling_variants_as_one() -> None:
    c = start("k1", served("Refund window?", (1.0, 0.0), answer="first"), POLICY)
    c = absorb(c, served("how long do refunds take", (1.0, 0.0), minutes=1), POLICY)
    c = absorb(c, served("How long do  refunds take", (1.0, 0.0), minutes=2, answer="latest"), POLICY)
    assert c.representative_queries(5) == ["how long do refunds take", "Refund window?"]
    assert [(q.count, q.answer) for q in c.queries] == [(2, "latest"), (1, "first")]


def test_evidence_ids_are_those_of_the_most_frequent_answer_in_prompt_order() -> None:
    c = start("k1", served("q", (1.0, 0.0), ("c2", "c1")), POLICY)
    c = absorb(c, served("q", (1.0, 0.0), ("c1", "c3"), minutes=1), POLICY)
    assert c.evidence_ids == ("c2", "c1")  # tie: the first seen
    c = absorb(c, served("q", (1.0, 0.0), ("c1", "c3"), minutes=2), POLICY)
    assert c.evidence_ids == ("c1", "c3")
    assert [e.count for e in c.evidence] == [2, 1]


def test_kept_queries_are_bounded_and_the_count_is_not() -> None:
    policy = dataclasses.replace(POLICY, max_queries=2)
    c = start("k1", served("a", (1.0, 0.0)), policy)
    for i, q in enumerate(["b", "b", "c"], start=1):
        c = absorb(c, served(q, (1.0, 0.0), minutes=i), policy)
    assert c.count == 4
    assert c.representative_queries(5) == ["b", "a"]


def test_the_centroid_is_the_sum_of_unit_embeddings() -> None:
    c = start("k1", served("q", (2.0, 0.0)), POLICY)
    c = absorb(c, served("q", (0.0, 5.0)), POLICY)
    assert c.centroid_sum == pytest.approx((1.0, 1.0))


def test_review_moves_a_proposed_candidate_to_approved_or_rejected() -> None:
    c = start("k1", served("q", (1.0, 0.0)), dataclasses.replace(POLICY, propose_at=1))
    approved = reviewed(c, review(approved=True))
    assert approved.state is CandidateState.APPROVED
    assert approved.review is not None and approved.review.route == "refunds"
    assert reviewed(c, review(approved=False)).state is CandidateState.REJECTED


def test_approval_needs_a_route() -> None:
    c = start("k1", served("q", (1.0, 0.0)), dataclasses.replace(POLICY, propose_at=1))
    with pytest.raises(InvalidFieldError, match="route"):
        reviewed(c, review(approved=True, route=""))


def test_a_second_review_or_a_review_before_proposal_is_refused() -> None:
    c = start("k1", served("q", (1.0, 0.0)), dataclasses.replace(POLICY, propose_at=1))
    done = reviewed(c, review(approved=False))
    with pytest.raises(CandidateNotReviewableError, match="already reviewed"):
        reviewed(done, review(approved=True))
    gathering = start("k2", served("q", (1.0, 0.0)), POLICY)
    with pytest.raises(CandidateNotReviewableError, match="not proposed yet"):
        reviewed(gathering, review(approved=True))


def test_only_an_approved_candidate_is_promoted_by_its_published_module() -> None:
    c = start("k1", served("q", (1.0, 0.0)), dataclasses.replace(POLICY, propose_at=1))
    approved = reviewed(c, review(approved=True))
    done = promoted(approved, "acme/refunds@1")
    assert (done.state, done.module_id) == (CandidateState.PROMOTED, "acme/refunds@1")
    rejected = reviewed(c, review(approved=False))
    assert promoted(rejected, "acme/refunds@1") is rejected
    assert promoted(c, "acme/refunds@1") is c


def test_a_reviewed_candidate_keeps_counting_its_queries() -> None:
    c = start("k1", served("q", (1.0, 0.0)), dataclasses.replace(POLICY, propose_at=1))
    rejected = reviewed(c, review(approved=False))
    again = absorb(rejected, served("q", (1.0, 0.0), minutes=5), POLICY)
    assert (again.state, again.count) == (CandidateState.REJECTED, 2)
