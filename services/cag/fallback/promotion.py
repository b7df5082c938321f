"""Promotion of repeated fallbacks: each served fallback counted in its candidate, proposals announced, reviews
applied (approval through the `Approver`), and approved candidates marked promoted when their module is
published. Transport-free: the gRPC and event adapters call it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from cag.errors import CagError, Status
from cag.events.schemas import (
    MAX_CANDIDATE_QUERIES,
    CandidateProposedV1,
    Envelope,
    FallbackServedV1,
    ModulePublishedV1,
)
from cag.fallback.approval import Approver
from cag.fallback.candidate_store import CandidatePage, CandidateStore, Counted
from cag.fallback.core.candidates import Candidate, CandidateState, Review, ServedFallback, promoted, reviewed
from cag.fallback.embedder import Embeds, embed

log = logging.getLogger(__name__)
Publish = Callable[[Envelope], Awaitable[None]]


class UnknownCandidateError(CagError):
    status = Status.NOT_FOUND
    reason = "UNKNOWN_CANDIDATE"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewOrder:
    candidate_id: str
    approve: bool
    reviewer: str
    actor: str  # the authenticated caller
    route: str
    comment: str
    expect: tuple[str, ...] = ()  # facts the module's answers must hold (golden checks), from the reviewer


class Promotion:
    def __init__(self, store: CandidateStore, embedder: Embeds, publish: Publish, approver: Approver) -> None:
        self._store, self._embedder, self._publish, self._approver = store, embedder, publish, approver

    async def served(self, envelope: Envelope, payload: FallbackServedV1) -> Counted | None:
        """Count one served fallback (once per event id); None when it named no evidence (nothing to compile)."""
        if not payload.evidence_ids:
            return None
        [vector] = await embed(self._embedder, [payload.query])
        counted = await self._store.count(
            ServedFallback(
                event_id=envelope.event_id,
                tenant_id=payload.tenant_id,
                query=payload.query,
                embedding=tuple(vector),
                evidence_ids=tuple(payload.evidence_ids),
                answer=payload.answer,
                served_at=envelope.occurred_at,
            )
        )
        # A redelivery finds a proposal whose publish failed before: it is published now, with the same event id.
        if counted.proposal_event_id is not None:
            await self._announce(counted.candidate, counted.proposal_event_id)
        return counted

    async def _announce(self, candidate: Candidate, event_id: str) -> None:
        proposal = CandidateProposedV1(
            candidate_id=candidate.candidate_id,
            tenant_id=candidate.tenant_id,
            count=candidate.count,
            queries=candidate.representative_queries(MAX_CANDIDATE_QUERIES),
            evidence_ids=list(candidate.evidence_ids),
        )
        await self._publish(Envelope.wrap(proposal, event_id=event_id))
        await self._store.proposal_published(candidate.candidate_id)
        log.info("candidate %s proposed (%d fallbacks)", candidate.candidate_id, candidate.count)

    async def get(self, candidate_id: str) -> Candidate:
        found = await self._store.get(candidate_id)
        if found is None:
            raise UnknownCandidateError(f"no promotion candidate {candidate_id!r}")
        return found

    async def page(
        self, *, tenants: frozenset[str] | None, state: CandidateState | None, offset: int, limit: int
    ) -> CandidatePage:
        return await self._store.page(tenants=tenants, state=state, offset=offset, limit=limit)

    async def review(self, order: ReviewOrder) -> Candidate:
        """Approve (compile + route rule, then APPROVED) or reject a PROPOSED candidate; a failed approval step
        leaves it PROPOSED."""

        async def apply(candidate: Candidate) -> Candidate:
            review = Review(
                approved=order.approve,
                reviewer=order.reviewer or order.actor,
                actor=order.actor,
                route=order.route if order.approve else "",
                comment=order.comment,
                at=datetime.now(UTC),
            )
            changed = reviewed(candidate, review)
            if not order.approve:
                return changed
            job_id = await self._approver.approve(changed, order.route, order.expect)
            return dataclasses.replace(changed, review=dataclasses.replace(review, compile_job_id=job_id))

        changed = await self._store.change(order.candidate_id, apply)
        if changed is None:
            raise UnknownCandidateError(f"no promotion candidate {order.candidate_id!r}")
        return changed

    async def module_published(self, envelope: Envelope, payload: ModulePublishedV1) -> list[Candidate]:
        """APPROVED candidates of the module's tenant and route, reviewed before it was published, become PROMOTED."""
        done = []
        for candidate in await self._store.approved_for(payload.tenant_id, payload.route):
            if candidate.review is None or candidate.review.at > envelope.occurred_at:
                continue
            changed = await self._store.change(candidate.candidate_id, _promote(payload.module_id))
            if changed is not None and changed.state is CandidateState.PROMOTED:
                done.append(changed)
                log.info("candidate %s promoted: module %s", changed.candidate_id, payload.module_id)
        return done


def _promote(module_id: str) -> Callable[[Candidate], Awaitable[Candidate]]:
    async def change(candidate: Candidate) -> Candidate:
        return promoted(candidate, module_id)

    return change
