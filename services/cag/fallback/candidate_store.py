"""Promotion candidates in the registry's Postgres, next to the chunk index: tables of the fallback's own, created
when missing (as the index's are).

`fallback_candidates` holds one row per cluster (its state, counts, representative queries and evidence, and
the review); `fallback_candidate_members` one row per served fallback counted, keyed by its event id, so a
redelivered `cag.fallback.served` is counted once. Clustering a tenant's fallback takes a transaction-scoped
advisory lock on the tenant: two replicas never both start a cluster for the same question.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cag.fallback.core.candidates import (
    Candidate,
    CandidateState,
    ClusteringPolicy,
    EvidenceStat,
    QueryStat,
    Review,
    ServedFallback,
    absorb,
    closest,
    start,
)

metadata = MetaData()
candidates = Table(
    "fallback_candidates",
    metadata,
    Column("candidate_id", String(36), primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("centroid_sum", JSONB, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("queries", JSONB, nullable=False),
    Column("evidence", JSONB, nullable=False),
    Column("review", JSONB),
    Column("module_id", String(200), nullable=False, server_default=""),
    # The cag.candidate.proposed event: its id once proposed, and whether it was published.
    Column("proposal_event_id", String(36)),
    Column("proposal_published", Boolean, nullable=False, server_default=text("false")),
    Index("fallback_candidates_tenant_state", "tenant_id", "state"),
)
members = Table(
    "fallback_candidate_members",
    metadata,
    Column("event_id", String(256), primary_key=True),
    Column("candidate_id", String(36), ForeignKey("fallback_candidates.candidate_id"), nullable=False),
    Column("query", Text, nullable=False),
    Column("evidence_ids", JSONB, nullable=False),
    Column("served_at", DateTime(timezone=True), nullable=False),
    Index("fallback_candidate_members_candidate", "candidate_id"),
)
MAX_PAGE = 500


@dataclass(frozen=True, kw_only=True)
class Counted:
    """What counting one served fallback did."""

    candidate: Candidate
    duplicate: bool  # the event was counted before: nothing changed
    proposal_event_id: str | None  # set while the candidate's proposal is still to be published


@dataclass(frozen=True, kw_only=True)
class CandidatePage:
    candidates: list[Candidate]
    next_offset: int | None


class CandidateStore:
    def __init__(self, engine: AsyncEngine, policy: ClusteringPolicy) -> None:
        self._engine = engine
        self.policy = policy

    async def create_tables(self) -> None:
        """Idempotent: the tables and indexes are created when missing."""
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)

    async def count(self, served: ServedFallback) -> Counted:
        """Count `served` in its cluster (or a new one), once per event id."""
        async with self._engine.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(_lock_key(served.tenant_id))))
            seen = (
                await conn.execute(select(members.c.candidate_id).where(members.c.event_id == served.event_id))
            ).first()
            if seen is not None:
                row = await _row(conn, seen.candidate_id)
                return Counted(candidate=_candidate(row), duplicate=True, proposal_event_id=_pending_proposal(row))
            tenant_rows = (
                await conn.execute(select(candidates).where(candidates.c.tenant_id == served.tenant_id))
            ).all()
            found = closest([_candidate(r._mapping) for r in tenant_rows], served, self.policy)
            if found is None:
                candidate = start(str(uuid.uuid4()), served, self.policy)
                await conn.execute(insert(candidates).values(**_values(candidate)))
            else:
                candidate = absorb(found, served, self.policy)
                await conn.execute(
                    candidates.update()
                    .where(candidates.c.candidate_id == candidate.candidate_id)
                    .values(**_values(candidate))
                )
            proposal = None
            if candidate.state is CandidateState.PROPOSED and (
                found is None or found.state is CandidateState.GATHERING
            ):
                proposal = str(uuid.uuid4())
                await conn.execute(
                    candidates.update()
                    .where(candidates.c.candidate_id == candidate.candidate_id)
                    .values(proposal_event_id=proposal)
                )
            await conn.execute(
                insert(members).values(
                    event_id=served.event_id,
                    candidate_id=candidate.candidate_id,
                    query=served.query,
                    evidence_ids=list(served.evidence_ids),
                    served_at=served.served_at,
                )
            )
            return Counted(candidate=candidate, duplicate=False, proposal_event_id=proposal)

    async def proposal_published(self, candidate_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                candidates.update().where(candidates.c.candidate_id == candidate_id).values(proposal_published=True)
            )

    async def get(self, candidate_id: str) -> Candidate | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(candidates).where(candidates.c.candidate_id == candidate_id))).first()
        return None if row is None else _candidate(row._mapping)

    async def page(
        self, *, tenants: Collection[str] | None, state: CandidateState | None, offset: int, limit: int
    ) -> CandidatePage:
        """Candidates a reviewer sees (never GATHERING ones), most frequent first; `tenants` None: every tenant."""
        query = select(candidates).where(candidates.c.state != CandidateState.GATHERING.value)
        if state is not None:
            query = query.where(candidates.c.state == state.value)
        if tenants is not None:
            query = query.where(candidates.c.tenant_id.in_(sorted(tenants)))
        query = query.order_by(candidates.c.count.desc(), candidates.c.candidate_id).offset(offset).limit(limit + 1)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_candidate(r._mapping) for r in rows[:limit]]
        return CandidatePage(candidates=found, next_offset=offset + limit if len(rows) > limit else None)

    async def change(self, candidate_id: str, change: Callable[[Candidate], Awaitable[Candidate]]) -> Candidate | None:
        """Apply `change` to the candidate under a row lock and store what it returns; None: no such candidate.

        The lock is held while `change` runs (a review's compile request and rule update): a concurrent review
        waits, then finds the candidate reviewed. If `change` raises, nothing is stored."""
        async with self._engine.begin() as conn:
            query = select(candidates).where(candidates.c.candidate_id == candidate_id).with_for_update()
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            changed = await change(_candidate(row._mapping))
            await conn.execute(
                candidates.update().where(candidates.c.candidate_id == candidate_id).values(**_values(changed))
            )
            return changed

    async def approved_for(self, tenant_id: str, route: str) -> list[Candidate]:
        """APPROVED candidates whose review named this route (a module published there promotes them)."""
        query = select(candidates).where(
            candidates.c.tenant_id == tenant_id,
            candidates.c.state == CandidateState.APPROVED.value,
            candidates.c.review["route"].astext == route,
        )
        async with self._engine.connect() as conn:
            return [_candidate(r._mapping) for r in (await conn.execute(query)).all()]


def _lock_key(tenant_id: str) -> int:
    """A signed 64-bit advisory lock key for the tenant's clustering."""
    digest = hashlib.blake2b(f"fallback-candidates:{tenant_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _row(conn: AsyncConnection, candidate_id: str) -> RowMapping:
    return (await conn.execute(select(candidates).where(candidates.c.candidate_id == candidate_id))).one()._mapping


def _pending_proposal(row: RowMapping) -> str | None:
    return None if row["proposal_published"] else row["proposal_event_id"]


def _values(c: Candidate) -> dict[str, Any]:
    return {
        "candidate_id": c.candidate_id,
        "tenant_id": c.tenant_id,
        "state": c.state.value,
        "centroid_sum": list(c.centroid_sum),
        "count": c.count,
        "first_seen": c.first_seen,
        "last_seen": c.last_seen,
        "queries": [
            {"text": q.text, "count": q.count, "answer": q.answer, "first_seen": q.first_seen.isoformat()}
            for q in c.queries
        ],
        "evidence": [
            {"evidence_ids": list(e.evidence_ids), "count": e.count, "first_seen": e.first_seen.isoformat()}
            for e in c.evidence
        ],
        "review": None if c.review is None else _review_json(c.review),
        "module_id": c.module_id,
    }


def _review_json(r: Review) -> dict[str, Any]:
    return {**dataclasses.asdict(r), "at": r.at.isoformat()}


def _candidate(row: RowMapping) -> Candidate:
    review = row["review"]
    return Candidate(
        candidate_id=row["candidate_id"],
        tenant_id=row["tenant_id"],
        state=CandidateState(row["state"]),
        centroid_sum=tuple(row["centroid_sum"]),
        count=row["count"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        queries=tuple(
            QueryStat(
                text=q["text"], count=q["count"], answer=q["answer"], first_seen=datetime.fromisoformat(q["first_seen"])
            )
            for q in row["queries"]
        ),
        evidence=tuple(
            EvidenceStat(
                evidence_ids=tuple(e["evidence_ids"]),
                count=e["count"],
                first_seen=datetime.fromisoformat(e["first_seen"]),
            )
            for e in row["evidence"]
        ),
        review=None if review is None else Review(**{**review, "at": datetime.fromisoformat(review["at"])}),
        module_id=row["module_id"],
    )
