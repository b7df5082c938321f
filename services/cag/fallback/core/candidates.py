"""Promotion candidates: repeated fallback queries clustered, counted, and reviewed.

Every served fallback is offered to its tenant's clusters. It joins the most similar one whose centroid
(mean of its members' unit query embeddings) has cosine similarity >= `similarity` with the query and whose
evidence overlaps the query's (overlap coefficient >= `evidence_overlap`: the same question answered from
other chunks is another topic); otherwise it starts a cluster. A cluster is GATHERING until its count reaches
`propose_at`, then PROPOSED (a candidate a reviewer sees); a review makes it APPROVED or REJECTED, and an
approved candidate becomes PROMOTED when its module is published. Every state keeps absorbing its queries:
counts after a review show how often such queries still fall back.

Pure: vectors are given (the service embeds), times are given, ids are given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cag.errors import CagError, InvalidFieldError, Status


class CandidateState(StrEnum):
    GATHERING = "gathering"  # fewer fallbacks than the proposal threshold: not shown to reviewers
    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    PROMOTED = "promoted"


class CandidateNotReviewableError(CagError):
    """The candidate was already reviewed, or is not yet proposed."""

    status = Status.FAILED_PRECONDITION
    reason = "CANDIDATE_NOT_REVIEWABLE"


@dataclass(frozen=True, kw_only=True)
class ClusteringPolicy:
    similarity: float = 0.8  # cosine of the query embedding with a cluster's centroid
    evidence_overlap: float = 0.5  # |A ∩ B| / min(|A|, |B|) of the evidence chunk ids
    propose_at: int = 3  # fallbacks before a cluster is proposed
    max_queries: int = 32  # distinct queries kept per cluster (more are counted, not kept)
    max_evidence_sets: int = 16  # distinct evidence sequences kept per cluster

    def __post_init__(self) -> None:
        if not (0.0 < self.similarity <= 1.0 and 0.0 < self.evidence_overlap <= 1.0):
            raise ValueError("similarity and evidence_overlap must be in (0, 1]")
        if min(self.propose_at, self.max_queries, self.max_evidence_sets) < 1:
            raise ValueError("propose_at, max_queries and max_evidence_sets must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ServedFallback:
    """One answered fallback, as promotion sees it."""

    event_id: str
    tenant_id: str
    query: str
    embedding: tuple[float, ...]  # the query's embedding (any norm; it is normalized here)
    evidence_ids: tuple[str, ...]  # prompt order
    answer: str
    served_at: datetime


@dataclass(frozen=True, kw_only=True)
class QueryStat:
    text: str  # as first asked
    count: int
    answer: str  # the latest answer the fallback gave it
    first_seen: datetime


@dataclass(frozen=True, kw_only=True)
class EvidenceStat:
    evidence_ids: tuple[str, ...]
    count: int
    first_seen: datetime


@dataclass(frozen=True, kw_only=True)
class Review:
    approved: bool
    reviewer: str  # who the request says reviewed
    actor: str  # the authenticated caller that sent the review
    route: str  # "" on rejection
    comment: str
    at: datetime
    compile_job_id: str = ""


@dataclass(frozen=True, kw_only=True)
class Candidate:
    candidate_id: str
    tenant_id: str
    state: CandidateState
    centroid_sum: tuple[float, ...]  # sum of the members' unit embeddings
    count: int
    first_seen: datetime
    last_seen: datetime
    queries: tuple[QueryStat, ...]  # most frequent first
    evidence: tuple[EvidenceStat, ...]  # most frequent first
    review: Review | None = None
    module_id: str = ""  # the published module, once PROMOTED

    @property
    def evidence_ids(self) -> tuple[str, ...]:
        """The evidence of the most frequent answer, in its prompt order."""
        return self.evidence[0].evidence_ids if self.evidence else ()

    def representative_queries(self, limit: int) -> list[str]:
        return [q.text for q in self.queries[:limit]]


def unit(vector: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0 or not math.isfinite(norm):
        raise InvalidFieldError("embedding", "must be a finite, non-zero vector")
    return tuple(x / norm for x in vector)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two non-zero vectors of one dimension."""
    if len(a) != len(b):
        raise InvalidFieldError("embedding", f"has {len(b)} dimensions; the cluster's have {len(a)}")
    return sum(x * y for x, y in zip(unit(a), unit(b), strict=True))


def evidence_overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """Overlap coefficient of two evidence id sets (1.0 when one holds the other); 0.0 when either is empty."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / min(len(sa), len(sb)) if sa and sb else 0.0


def closest(candidates: Sequence[Candidate], served: ServedFallback, policy: ClusteringPolicy) -> Candidate | None:
    """The tenant's candidate the fallback joins: the most similar of those within both thresholds."""
    best: tuple[float, Candidate] | None = None
    for candidate in candidates:
        if candidate.tenant_id != served.tenant_id:
            continue
        if evidence_overlap(candidate.evidence_ids, served.evidence_ids) < policy.evidence_overlap:
            continue
        similarity = cosine(candidate.centroid_sum, served.embedding)
        if similarity >= policy.similarity and (best is None or similarity > best[0]):
            best = (similarity, candidate)
    return None if best is None else best[1]


def start(candidate_id: str, served: ServedFallback, policy: ClusteringPolicy) -> Candidate:
    """A new cluster holding one fallback (already PROPOSED when the threshold is 1)."""
    empty = Candidate(
        candidate_id=candidate_id,
        tenant_id=served.tenant_id,
        state=CandidateState.GATHERING,
        centroid_sum=tuple(0.0 for _ in served.embedding),
        count=0,
        first_seen=served.served_at,
        last_seen=served.served_at,
        queries=(),
        evidence=(),
    )
    return absorb(empty, served, policy)


def absorb(candidate: Candidate, served: ServedFallback, policy: ClusteringPolicy) -> Candidate:
    """The candidate with one more fallback counted; GATHERING becomes PROPOSED at the threshold."""
    count = candidate.count + 1
    proposed = candidate.state is CandidateState.GATHERING and count >= policy.propose_at
    return dataclasses.replace(
        candidate,
        count=count,
        centroid_sum=tuple(s + x for s, x in zip(candidate.centroid_sum, unit(served.embedding), strict=True)),
        first_seen=min(candidate.first_seen, served.served_at),
        last_seen=max(candidate.last_seen, served.served_at),
        queries=_count_query(candidate.queries, served, policy.max_queries),
        evidence=_count_evidence(candidate.evidence, served, policy.max_evidence_sets),
        state=CandidateState.PROPOSED if proposed else candidate.state,
    )


def same_query(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _count_query(stats: tuple[QueryStat, ...], served: ServedFallback, limit: int) -> tuple[QueryStat, ...]:
    found = next((s for s in stats if same_query(s.text, served.query)), None)
    if found is None:
        kept = [*stats, QueryStat(text=served.query, count=1, answer=served.answer, first_seen=served.served_at)]
    else:
        bumped = dataclasses.replace(found, count=found.count + 1, answer=served.answer)
        kept = [bumped if s is found else s for s in stats]
    return tuple(sorted(kept, key=lambda s: (-s.count, s.first_seen))[:limit])


def _count_evidence(stats: tuple[EvidenceStat, ...], served: ServedFallback, limit: int) -> tuple[EvidenceStat, ...]:
    found = next((s for s in stats if s.evidence_ids == served.evidence_ids), None)
    if found is None:
        kept = [*stats, EvidenceStat(evidence_ids=served.evidence_ids, count=1, first_seen=served.served_at)]
    else:
        kept = [dataclasses.replace(s, count=s.count + 1) if s is found else s for s in stats]
    return tuple(sorted(kept, key=lambda s: (-s.count, s.first_seen))[:limit])


def reviewed(candidate: Candidate, review: Review) -> Candidate:
    """PROPOSED → APPROVED (a route is required) | REJECTED; any other state is refused."""
    if candidate.state is not CandidateState.PROPOSED:
        already = "was already reviewed" if candidate.review is not None else "is not proposed yet"
        raise CandidateNotReviewableError(
            f"candidate {candidate.candidate_id} {already} (state {candidate.state.value}); only a proposed "
            "candidate can be approved or rejected"
        )
    if review.approved and not review.route:
        raise InvalidFieldError("route", "is required to approve: the route the promoted module will serve")
    state = CandidateState.APPROVED if review.approved else CandidateState.REJECTED
    return dataclasses.replace(candidate, state=state, review=review)


def promoted(candidate: Candidate, module_id: str) -> Candidate:
    """APPROVED → PROMOTED once its module is published; any other state is left as it is."""
    if candidate.state is not CandidateState.APPROVED:
        return candidate
    return dataclasses.replace(candidate, state=CandidateState.PROMOTED, module_id=module_id)
