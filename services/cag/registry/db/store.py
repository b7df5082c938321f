"""The registry store on Postgres. Every state change writes its outbox events in the same transaction."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from cag.acl import PUBLIC_TENANT
from cag.errors import InvalidFieldError
from cag.events.schemas import Envelope
from cag.registry.core.audit import (
    EVERY_TENANT,
    SYSTEM_ATTRIBUTION,
    Attribution,
    AuditAction,
    AuditEntry,
    AuditQuery,
    encode_audit_token,
)
from cag.registry.core.records import ModuleChange, ModuleRecord, RouteDecision
from cag.registry.core.route_rules import RuleSet, RuleSetVersionConflictError
from cag.registry.core.states import ALLOWED, LIVE, IllegalTransitionError, ModuleState, check_transition
from cag.registry.core.store import (
    AlreadyRegisteredError,
    ConcurrentPublishError,
    ListQuery,
    RegistryNotFoundError,
    RegistryStore,
    RouteResolution,
    check_expected_version,
    check_rules_version,
    encode_page_token,
    file_identity,
    module_event,
    registered_as,
    rollback_reason,
    routes_event,
    trigger_reason,
    trigger_tenant,
)
from cag.registry.core.triggers import (
    AclChanged,
    LayoutChanged,
    ModelRevised,
    ModuleWithdrawn,
    SourceChanged,
    TokenizerRetired,
    Trigger,
    TtlElapsed,
)
from cag.registry.db.convert import record_of, row_values
from cag.registry.db.schema import (
    AuditRow,
    LayoutRow,
    ModelRevisionRow,
    ModuleRow,
    OutboxRow,
    ProcessedEventRow,
    RouteDecisionRow,
    RouteRow,
    RouteRuleSetRow,
    SourceRow,
)

M = ModuleRow


def trigger_predicate(trigger: Trigger) -> ColumnElement[bool]:
    """The SQL twin of `trigger.selects` (the conformance suite checks they agree)."""
    match trigger:
        case SourceChanged():
            return and_(
                M.tenant_id == trigger.tenant_id,
                M.source_uri == trigger.source_uri,
                M.source_checksum != trigger.checksum,
            )
        case ModelRevised():
            return and_(M.model_name == trigger.model_name, M.model_revision != trigger.model_revision)
        case TokenizerRetired():
            return M.tokenizer_revision == trigger.tokenizer_revision
        case AclChanged():
            clause = and_(M.tenant_id == trigger.tenant_id, M.acl_scope == trigger.scope.value)
            return and_(clause, M.acl_principal == trigger.principal) if trigger.principal else clause
        case LayoutChanged():
            return and_(M.layout_id == trigger.layout_id, M.layout_hash != trigger.layout_hash)
        case ModuleWithdrawn():
            return M.module_id == trigger.module_id
        case TtlElapsed():
            return and_(M.expires_at.is_not(None), M.expires_at <= trigger.now)
    raise AssertionError(f"unhandled trigger {trigger!r}")


def _resolve_chain_query() -> Select[tuple[ModuleRow, dict[str, Any]]]:
    """The route's active module and its ancestors with their layouts, root first (params: tenant, route)."""
    parent = aliased(ModuleRow)
    start = (
        select(M.module_id, M.parent_id, literal(0).label("depth"))
        .join(RouteRow, RouteRow.active_module_id == M.module_id)
        .where(RouteRow.tenant_id == bindparam("tenant"), RouteRow.route == bindparam("route"))
        .cte("chain", recursive=True)
    )
    chain = start.union_all(
        select(parent.module_id, parent.parent_id, start.c.depth + 1).join(start, parent.module_id == start.c.parent_id)
    )
    return (
        select(M, LayoutRow.body)
        .join(chain, chain.c.module_id == M.module_id)
        .join(LayoutRow, LayoutRow.layout_hash == M.layout_hash)
        .order_by(chain.c.depth.desc())
    )


_RESOLVE_CHAIN = _resolve_chain_query()


class PostgresStore(RegistryStore):
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def _records(self, session: AsyncSession, rows: Sequence[ModuleRow]) -> list[ModuleRecord]:
        hashes = {r.layout_hash for r in rows}
        layouts = {}
        if hashes:
            found = await session.execute(select(LayoutRow).where(LayoutRow.layout_hash.in_(hashes)))
            layouts = {row.layout_hash: row.body for row in found.scalars()}
        return [record_of(r, layouts[r.layout_hash]) for r in rows]

    async def _row(self, session: AsyncSession, module_id: str, *, lock: bool = False) -> ModuleRow:
        query = select(ModuleRow).where(ModuleRow.module_id == module_id)
        row = (await session.execute(query.with_for_update() if lock else query)).scalar_one_or_none()
        if row is None:
            raise RegistryNotFoundError(f"module {module_id} is not registered")
        return row

    @staticmethod
    def _audit(
        session: AsyncSession,
        action: AuditAction,
        by: Attribution,
        *,
        event_id: str,
        tenant_id: str,
        module_ids: Sequence[str],
        route: str = "",
        version: int | None = None,
        trigger: str = "",
    ) -> None:
        session.add(
            AuditRow(
                event_id=event_id, action=action.value, actor=by.actor, reason=by.reason, tenant_id=tenant_id,
                route=route, version=version, module_ids=list(module_ids), trigger=trigger,
            )
        )  # fmt: skip

    @staticmethod
    def _outbox(session: AsyncSession, envelope: Envelope, module_id: str | None) -> None:
        session.add(
            OutboxRow(
                event_id=envelope.event_id,
                subject=envelope.subject,
                module_id=module_id,
                envelope=envelope.model_dump(mode="json"),
                attempts=0,
            )
        )

    async def register(self, record: ModuleRecord) -> ModuleRecord:
        m = record.metadata
        async with self.sessions.begin() as session:
            existing = await session.get(ModuleRow, m.module_id)
            if existing is not None:
                if (existing.tensor_checksum, existing.header_sha256) != file_identity(record):
                    raise AlreadyRegisteredError(f"module {m.module_id} is registered with different content")
                return (await self._records(session, [existing]))[0]
            if m.parent_id is not None:
                await self._row(session, m.parent_id)  # the parent must be registered first
            await session.execute(
                insert(LayoutRow)
                .values(layout_hash=m.layout_hash, layout_id=m.layout_id, body=json.loads(m.layout))
                .on_conflict_do_nothing()
            )
            await session.execute(
                insert(SourceRow)
                .values(tenant_id=m.tenant_id, uri=record.source_uri, checksum=m.source_checksum)
                .on_conflict_do_update(
                    index_elements=["tenant_id", "uri"], set_={"checksum": m.source_checksum, "updated_at": func.now()}
                )
            )
            await session.execute(
                insert(ModelRevisionRow)
                .values(
                    model_name=m.model_name, model_revision=m.model_revision, tokenizer_revision=m.tokenizer_revision
                )
                .on_conflict_do_nothing()
            )
            state, reason = registered_as(record)
            row = ModuleRow(**row_values(record) | {"state": state.value, "state_reason": reason, "version": None})
            session.add(row)
            await session.flush()
            await session.refresh(row)
            return (await self._records(session, [row]))[0]

    async def get(self, module_id: str) -> ModuleRecord:
        async with self.sessions() as session:
            return (await self._records(session, [await self._row(session, module_id)]))[0]

    async def list_modules(self, query: ListQuery) -> tuple[list[ModuleRecord], str]:
        stmt = select(ModuleRow).order_by(ModuleRow.module_id).limit(query.page_size + 1)
        filters = {
            "tenant_id": query.tenant_id,
            "route": query.route,
            "model_name": query.model_name,
            "layout_id": query.layout_id,
            "state": query.state.value if query.state else None,
        }
        for column, value in filters.items():
            if value is not None:
                stmt = stmt.where(getattr(ModuleRow, column) == value)
        if query.after is not None:
            stmt = stmt.where(ModuleRow.module_id > query.after)
        async with self.sessions() as session:
            rows = list((await session.execute(stmt)).scalars())
            page = await self._records(session, rows[: query.page_size])
        more = len(rows) > query.page_size
        return page, encode_page_token(page[-1].module_id) if more else ""

    async def publish(
        self, module_id: str, *, expected_version: int | None = None, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> ModuleRecord:
        try:
            async with self.sessions.begin() as session:
                row = await self._row(session, module_id, lock=True)
                if row.state == ModuleState.PUBLISHED:
                    return (await self._records(session, [row]))[0]
                check_transition(module_id, ModuleState(row.state), ModuleState.PUBLISHED)
                latest = await session.scalar(
                    select(func.max(ModuleRow.version)).where(
                        ModuleRow.tenant_id == row.tenant_id, ModuleRow.route == row.route
                    )
                )
                check_expected_version(module_id, expected_version, (latest or 0) + 1)
                row.version = (latest or 0) + 1
                row.state = ModuleState.PUBLISHED
                row.published_at = row.state_changed_at = datetime.now(UTC)
                await session.flush()
                await self._activate(session, row)
                record = (await self._records(session, [row]))[0]
                envelope = module_event(record, reason=f"published {by.note}")
                self._outbox(session, envelope, module_id)
                self._audit(
                    session, AuditAction.PUBLISH, by, event_id=envelope.event_id, tenant_id=row.tenant_id,
                    route=row.route, version=row.version, module_ids=[module_id],
                )  # fmt: skip
                return record
        except IntegrityError as e:
            raise ConcurrentPublishError(
                f"module {module_id}: another module took its route's next version concurrently; retry"
            ) from e

    @staticmethod
    async def _activate(session: AsyncSession, row: ModuleRow) -> None:
        assert row.version is not None
        await session.execute(
            insert(RouteRow)
            .values(
                tenant_id=row.tenant_id, route=row.route, active_module_id=row.module_id, active_version=row.version
            )
            .on_conflict_do_update(
                index_elements=["tenant_id", "route"],
                set_={"active_module_id": row.module_id, "active_version": row.version, "updated_at": func.now()},
            )
        )

    async def quarantine(self, module_id: str, reason: str, *, by: Attribution = SYSTEM_ATTRIBUTION) -> ModuleRecord:
        async with self.sessions.begin() as session:
            row = await self._row(session, module_id, lock=True)
            if row.state == ModuleState.QUARANTINED:
                return (await self._records(session, [row]))[0]
            check_transition(module_id, ModuleState(row.state), ModuleState.QUARANTINED)
            row.state, row.state_reason = ModuleState.QUARANTINED, reason
            row.state_changed_at = datetime.now(UTC)
            record = (await self._records(session, [row]))[0]
            envelope = module_event(record, reason=f"{reason} ({by.note})")
            self._outbox(session, envelope, module_id)
            self._audit(
                session, AuditAction.QUARANTINE, by, event_id=envelope.event_id, tenant_id=row.tenant_id,
                route=row.route, version=row.version, module_ids=[module_id],
            )  # fmt: skip
            return record

    async def put_route_rules(
        self, rule_set: RuleSet, *, expected_version: int | None = None, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> RuleSet:
        tenant = rule_set.tenant_id
        try:
            async with self.sessions.begin() as session:
                current = await session.scalar(
                    select(func.max(RouteRuleSetRow.version)).where(RouteRuleSetRow.tenant_id == tenant)
                )
                check_rules_version(tenant, expected_version, current or 0)
                row = RouteRuleSetRow(tenant_id=tenant, version=(current or 0) + 1, body=rule_set.body())
                session.add(row)
                await session.flush()
                await session.refresh(row)
                stored = RuleSet.from_body(tenant, row.version, row.body, row.created_at)
                envelope = routes_event(stored)
                self._outbox(session, envelope, None)
                self._audit(
                    session, AuditAction.PUT_ROUTE_RULES, by, event_id=envelope.event_id, tenant_id=tenant,
                    version=stored.version, module_ids=[],
                )  # fmt: skip
                return stored
        except IntegrityError as e:  # another writer took the next version between our read and our insert
            raise RuleSetVersionConflictError(
                f"the route rules of tenant {tenant} changed concurrently: read them again"
            ) from e

    async def get_route_rules(self, tenant_id: str, version: int | None = None) -> RuleSet:
        query = select(RouteRuleSetRow).where(RouteRuleSetRow.tenant_id == tenant_id)
        if version is None:
            query = query.order_by(RouteRuleSetRow.version.desc()).limit(1)
        else:
            query = query.where(RouteRuleSetRow.version == version)
        async with self.sessions() as session:
            row = (await session.execute(query)).scalar_one_or_none()
        if row is None:
            if version is None:
                return RuleSet(tenant_id=tenant_id, version=0)
            raise RegistryNotFoundError(f"tenant {tenant_id} has no route rules version {version}")
        return RuleSet.from_body(tenant_id, row.version, row.body, row.created_at)

    async def resolve_route(self, tenant_id: str, route: str) -> RouteResolution:
        # One round trip: the chain (recursive CTE from the route's active module up to the root) with each
        # module's layout, root first. Three queries before (ids, rows, layouts) made this the hot path's cost.
        async with self.sessions() as session:
            found = (await session.execute(_RESOLVE_CHAIN, {"tenant": tenant_id, "route": route})).all()
        if not found:
            raise RegistryNotFoundError(f"route {tenant_id}/{route} has no published module")
        records = [record_of(row, body) for row, body in found]
        leaf = records[-1]
        assert leaf.version is not None
        return RouteResolution(tenant_id=tenant_id, route=route, version=leaf.version, chain=records)

    async def invalidate(
        self, trigger: Trigger, *, event_id: str, consumer: str = "registry", by: Attribution = SYSTEM_ATTRIBUTION
    ) -> list[ModuleRecord]:
        from_states = [s.value for s in LIVE if trigger.target in ALLOWED[s]]
        hit = select(ModuleRow.module_id).where(trigger_predicate(trigger)).cte("hit", recursive=True)
        hit = hit.union(select(ModuleRow.module_id).join(hit, ModuleRow.parent_id == hit.c.module_id))
        reason = trigger_reason(trigger, by.note)
        async with self.sessions.begin() as session:
            first_time = await session.execute(
                insert(ProcessedEventRow)
                .values(consumer=consumer, event_id=event_id)
                .on_conflict_do_nothing()
                .returning(literal(1))
            )
            if first_time.first() is None:
                return []  # a redelivery: already applied
            changed = await session.execute(
                update(ModuleRow)
                .where(ModuleRow.module_id.in_(select(hit.c.module_id)), ModuleRow.state.in_(from_states))
                .values(state=trigger.target.value, state_reason=reason, state_changed_at=func.now())
                .returning(ModuleRow)
                .execution_options(synchronize_session=False)
            )
            rows = sorted(changed.scalars(), key=lambda r: r.module_id)
            records = await self._records(session, rows)
            for record in records:
                self._outbox(session, module_event(record, trigger_event_id=event_id), record.module_id)
            self._audit(
                session, AuditAction.INVALIDATE, by, event_id=event_id,
                tenant_id=await self._trigger_tenant(session, trigger),
                module_ids=[r.module_id for r in records], trigger=trigger_reason(trigger),
            )  # fmt: skip
            return records

    @staticmethod
    async def _trigger_tenant(session: AsyncSession, trigger: Trigger) -> str:
        tenant = trigger_tenant(trigger)
        if tenant is None and isinstance(trigger, ModuleWithdrawn):
            tenant = await session.scalar(select(ModuleRow.tenant_id).where(ModuleRow.module_id == trigger.module_id))
        return EVERY_TENANT if tenant is None else tenant

    async def rollback(
        self, tenant_id: str, route: str, to_version: int, *, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> ModuleRecord:
        if to_version < 1:
            raise InvalidFieldError("to_version", f"must be a published version (>= 1), got {to_version}")
        async with self.sessions.begin() as session:
            row = (
                await session.execute(
                    select(ModuleRow).where(
                        ModuleRow.tenant_id == tenant_id, ModuleRow.route == route, ModuleRow.version == to_version
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                raise RegistryNotFoundError(f"route {tenant_id}/{route} has no version {to_version}")
            if row.state != ModuleState.PUBLISHED:
                raise _not_servable(row)
            await self._activate(session, row)
            record = (await self._records(session, [row]))[0]
            envelope = module_event(record, reason=rollback_reason(to_version, by.note))
            self._outbox(session, envelope, row.module_id)
            self._audit(
                session, AuditAction.ROLLBACK, by, event_id=envelope.event_id, tenant_id=tenant_id, route=route,
                version=to_version, module_ids=[row.module_id],
            )  # fmt: skip
            return record

    async def record_route_decision(self, decision: RouteDecision) -> bool:
        values = dataclasses.asdict(decision) | {"module_ids": list(decision.module_ids)}
        async with self.sessions.begin() as session:
            inserted = await session.execute(
                insert(RouteDecisionRow).values(**values).on_conflict_do_nothing().returning(RouteDecisionRow.id)
            )
            return inserted.first() is not None

    async def route_decisions(self, tenant_id: str, *, limit: int = 100) -> list[RouteDecision]:
        stmt = (
            select(RouteDecisionRow)
            .where(RouteDecisionRow.tenant_id == tenant_id)
            .order_by(RouteDecisionRow.id.desc())
            .limit(limit)
        )
        async with self.sessions() as session:
            rows = (await session.execute(stmt)).scalars()
            return [_decision(r) for r in rows]

    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditEntry], str]:
        stmt = select(AuditRow).order_by(AuditRow.sequence.desc()).limit(query.page_size + 1)
        if query.tenant_id is not None:
            stmt = stmt.where(AuditRow.tenant_id == query.tenant_id)
        if query.before is not None:
            stmt = stmt.where(AuditRow.sequence < query.before)
        async with self.sessions() as session:
            rows = list((await session.execute(stmt)).scalars())
        page = [_audit_entry(r) for r in rows[: query.page_size]]
        return page, encode_audit_token(page[-1].sequence) if len(rows) > query.page_size else ""

    async def changes_since(
        self, sequence: int, *, tenant_id: str | None = None, limit: int = 100
    ) -> list[ModuleChange]:
        # Module changes only: the outbox also carries events about no module (cag.routes.updated).
        stmt = (
            select(OutboxRow)
            .where(OutboxRow.sequence > sequence, OutboxRow.module_id.is_not(None))
            .order_by(OutboxRow.sequence)
            .limit(limit)
        )
        if tenant_id is not None:
            # A tenant sees its own modules and the public ones.
            stmt = stmt.where(OutboxRow.envelope["data"]["tenant_id"].astext.in_([tenant_id, PUBLIC_TENANT]))
        async with self.sessions() as session:
            rows = list((await session.execute(stmt)).scalars())
        return [_change(r) for r in rows]


def _not_servable(row: ModuleRow) -> Exception:
    return IllegalTransitionError(f"module {row.module_id} (version {row.version}) is {row.state}; it cannot be served")


def _change(row: OutboxRow) -> ModuleChange:
    data: dict[str, Any] = row.envelope["data"]
    return ModuleChange(
        sequence=row.sequence,
        event_id=row.event_id,
        subject=row.subject,
        reason=str(data.get("reason", "")),
        module_id=data["module_id"],
        tenant_id=data["tenant_id"],
        route=data["route"],
        version=data.get("version"),
        state=ModuleState(data["state"]),
        occurred_at=datetime.fromisoformat(row.envelope["occurred_at"]),
    )


def _audit_entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        sequence=row.sequence, event_id=row.event_id, action=AuditAction(row.action), actor=row.actor,
        reason=row.reason, tenant_id=row.tenant_id, route=row.route, version=row.version,
        module_ids=tuple(row.module_ids), trigger=row.trigger, recorded_at=row.recorded_at,
    )  # fmt: skip


def _decision(row: RouteDecisionRow) -> RouteDecision:
    return RouteDecision(
        event_id=row.event_id,
        request_id=row.request_id,
        tenant_id=row.tenant_id,
        route=row.route,
        path=row.path,
        module_ids=tuple(row.module_ids),
        module_version=row.module_version,
        rule=row.rule,
        confidence=row.confidence,
        reason=row.reason,
        decided_at=row.decided_at,
    )
