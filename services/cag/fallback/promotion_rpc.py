"""The Candidates and Review calls of the fallback service: check the caller, unpack, promotion, pack.

The fallback's servicer delegates both methods here."""

from __future__ import annotations

from cag.auth import Scope
from cag.errors import InvalidFieldError
from cag.fallback.core.candidates import Candidate, CandidateState
from cag.fallback.promotion import Promotion, ReviewOrder
from cag.identifiers import check_name, check_text
from cag.rpc.auth import current_caller
from cag.rpc.timestamps import timestamp_of
from cag.v1 import fallback_pb2

DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_COMMENT = 1024
MAX_FACTS = 10
MAX_FACT_CHARS = 256
STATES = {
    CandidateState.PROPOSED: fallback_pb2.CANDIDATE_STATE_PROPOSED,
    CandidateState.APPROVED: fallback_pb2.CANDIDATE_STATE_APPROVED,
    CandidateState.REJECTED: fallback_pb2.CANDIDATE_STATE_REJECTED,
    CandidateState.PROMOTED: fallback_pb2.CANDIDATE_STATE_PROMOTED,
}
_STATE_OF = {proto: state for state, proto in STATES.items()}


def candidate_message(c: Candidate) -> fallback_pb2.PromotionCandidate:
    return fallback_pb2.PromotionCandidate(
        id=c.candidate_id,
        tenant_id=c.tenant_id,
        queries=[q.text for q in c.queries],
        evidence_ids=list(c.evidence_ids),
        count=c.count,
        state=STATES.get(c.state, fallback_pb2.CANDIDATE_STATE_UNSPECIFIED),
        first_seen_at=timestamp_of(c.first_seen),
        last_seen_at=timestamp_of(c.last_seen),
    )


def page_of(request: fallback_pb2.CandidatesRequest) -> tuple[CandidateState | None, int, int]:
    """(state filter, offset, limit) of a Candidates request; InvalidFieldError naming the field that is wrong."""
    if request.state != fallback_pb2.CANDIDATE_STATE_UNSPECIFIED and request.state not in _STATE_OF:
        raise InvalidFieldError("state", f"unknown candidate state {request.state}")
    if not 0 <= request.page_size <= MAX_PAGE:
        raise InvalidFieldError("page_size", f"must be 1 to {MAX_PAGE} (0: {DEFAULT_PAGE})")
    token = request.page_token
    if token and not (token.isascii() and token.isdigit() and len(token) <= 12):
        raise InvalidFieldError("page_token", "is not a token this service returned: start again without it")
    return _STATE_OF.get(request.state), int(token or 0), request.page_size or DEFAULT_PAGE


def facts_of(request: fallback_pb2.ReviewRequest) -> tuple[str, ...]:
    if len(request.expect) > MAX_FACTS:
        raise InvalidFieldError("expect", f"holds {len(request.expect)} facts; at most {MAX_FACTS}")
    facts = tuple(check_text("expect", f, max_chars=MAX_FACT_CHARS, required=True).strip() for f in request.expect)
    if not all(facts):
        raise InvalidFieldError("expect", "holds a blank fact")
    return facts


class PromotionRpcs:
    def __init__(self, promotion: Promotion) -> None:
        self._promotion = promotion

    async def candidates(self, request: fallback_pb2.CandidatesRequest) -> fallback_pb2.CandidatesResponse:
        caller = current_caller()
        state, offset, limit = page_of(request)
        tenants = caller.readable_tenants()
        if request.tenant_id:
            caller.require(Scope.READ, check_name("tenant_id", request.tenant_id))
            tenants = frozenset({request.tenant_id})
        page = await self._promotion.page(tenants=tenants, state=state, offset=offset, limit=limit)
        return fallback_pb2.CandidatesResponse(
            candidates=[candidate_message(c) for c in page.candidates],
            next_page_token="" if page.next_offset is None else str(page.next_offset),
        )

    async def review(self, request: fallback_pb2.ReviewRequest) -> fallback_pb2.ReviewResponse:
        caller = current_caller()
        if not request.candidate_id:
            raise InvalidFieldError("candidate_id", "is required")
        candidate = await self._promotion.get(check_text("candidate_id", request.candidate_id, max_chars=64))
        caller.require(Scope.WRITE, candidate.tenant_id)
        if request.approve and not request.route:
            raise InvalidFieldError("route", "is required to approve: the route the promoted module will serve")
        order = ReviewOrder(
            candidate_id=candidate.candidate_id,
            approve=request.approve,
            reviewer=check_text("reviewer", request.reviewer, max_chars=128),
            actor=caller.subject,
            route=check_name("route", request.route) if request.approve else "",
            comment=check_text("comment", request.comment, max_chars=MAX_COMMENT),
            expect=facts_of(request),
        )
        changed = await self._promotion.review(order)
        job_id = changed.review.compile_job_id if changed.review is not None else ""
        return fallback_pb2.ReviewResponse(candidate=candidate_message(changed), compile_job_id=job_id)
