"""A stateful in-memory registry store for unit tests; behaves like PostgresStore (conformance suite)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

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
from cag.registry.core.route_rules import RuleSet
from cag.registry.core.states import IllegalTransitionError, ModuleState, check_transition
from cag.registry.core.store import (
    AlreadyRegisteredError,
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
from cag.registry.core.triggers import ModuleWithdrawn, Trigger, affected_modules


class MemoryStore(RegistryStore):
    def __init__(self) -> None:
        self.modules: dict[str, ModuleRecord] = {}
        self.routes: dict[tuple[str, str], str] = {}
        self.processed: set[tuple[str, str]] = set()
        self.outbox: list[ModuleChange] = []
        self.decisions: dict[str, RouteDecision] = {}
        self.audit: list[AuditEntry] = []
        self.rule_sets: dict[str, list[RuleSet]] = {}
        self.events: list[Envelope] = []  # events that announce no module change (cag.routes.updated)
        self._lock = asyncio.Lock()  # one writer at a time, as a serializable transaction would

    def _get(self, module_id: str) -> ModuleRecord:
        try:
            return self.modules[module_id]
        except KeyError:
            raise RegistryNotFoundError(f"module {module_id} is not registered") from None

    def _audit(
        self,
        action: AuditAction,
        by: Attribution,
        *,
        event_id: str,
        tenant_id: str,
        module_ids: tuple[str, ...],
        route: str = "",
        version: int | None = None,
        trigger: str = "",
    ) -> None:
        self.audit.append(
            AuditEntry(
                sequence=len(self.audit) + 1, event_id=event_id, action=action, actor=by.actor, reason=by.reason,
                tenant_id=tenant_id, route=route, version=version, module_ids=module_ids, trigger=trigger,
                recorded_at=datetime.now(UTC),
            )
        )  # fmt: skip

    def _set(self, record: ModuleRecord, *, reason: str = "", trigger_event_id: str = "") -> ModuleChange:
        self.modules[record.module_id] = record
        envelope = module_event(record, reason=reason, trigger_event_id=trigger_event_id)
        m = record.metadata
        self.outbox.append(
            ModuleChange(
                sequence=len(self.outbox) + 1,
                event_id=envelope.event_id,
                subject=envelope.subject,
                reason=str(envelope.data["reason"]),
                module_id=m.module_id,
                tenant_id=m.tenant_id,
                route=m.route,
                version=record.version,
                state=record.state,
                occurred_at=envelope.occurred_at,
            )
        )
        return self.outbox[-1]

    async def register(self, record: ModuleRecord) -> ModuleRecord:
        async with self._lock:
            existing = self.modules.get(record.module_id)
            if existing is not None:
                if file_identity(existing) != file_identity(record):
                    raise AlreadyRegisteredError(f"module {record.module_id} is registered with different content")
                return existing
            if record.parent_id is not None:
                self._get(record.parent_id)
            now = datetime.now(UTC)
            state, reason = registered_as(record)
            stored = dataclasses.replace(
                record, state=state, state_reason=reason, version=None, registered_at=now, state_changed_at=now
            )
            self.modules[record.module_id] = stored
            return stored

    async def get(self, module_id: str) -> ModuleRecord:
        return self._get(module_id)

    async def list_modules(self, query: ListQuery) -> tuple[list[ModuleRecord], str]:
        wanted = {
            "tenant_id": query.tenant_id,
            "route": query.route,
            "model_name": query.model_name,
            "layout_id": query.layout_id,
        }
        after = query.after
        rows = [
            r
            for _, r in sorted(self.modules.items())
            if all(v is None or getattr(r.metadata, k) == v for k, v in wanted.items())
            and (query.state is None or r.state is query.state)
            and (after is None or r.module_id > after)
        ]
        page = rows[: query.page_size]
        return page, encode_page_token(page[-1].module_id) if len(rows) > query.page_size else ""

    async def publish(
        self, module_id: str, *, expected_version: int | None = None, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> ModuleRecord:
        async with self._lock:
            record = self._get(module_id)
            if record.state is ModuleState.PUBLISHED:
                return record
            check_transition(module_id, record.state, ModuleState.PUBLISHED)
            m = record.metadata
            versions = [
                r.version or 0
                for r in self.modules.values()
                if (r.metadata.tenant_id, r.metadata.route) == (m.tenant_id, m.route)
            ]
            check_expected_version(module_id, expected_version, max(versions) + 1)
            now = datetime.now(UTC)
            published = dataclasses.replace(
                record, state=ModuleState.PUBLISHED, version=max(versions) + 1, published_at=now, state_changed_at=now
            )
            self.routes[(m.tenant_id, m.route)] = module_id
            change = self._set(published, reason=f"published {by.note}")
            self._audit(
                AuditAction.PUBLISH, by, event_id=change.event_id, tenant_id=m.tenant_id, route=m.route,
                version=published.version, module_ids=(module_id,),
            )  # fmt: skip
            return published

    async def quarantine(self, module_id: str, reason: str, *, by: Attribution = SYSTEM_ATTRIBUTION) -> ModuleRecord:
        async with self._lock:
            record = self._get(module_id)
            if record.state is ModuleState.QUARANTINED:
                return record
            check_transition(module_id, record.state, ModuleState.QUARANTINED)
            quarantined = dataclasses.replace(
                record, state=ModuleState.QUARANTINED, state_reason=reason, state_changed_at=datetime.now(UTC)
            )
            change = self._set(quarantined, reason=f"{reason} ({by.note})")
            self._audit(
                AuditAction.QUARANTINE, by, event_id=change.event_id, tenant_id=record.metadata.tenant_id,
                route=record.metadata.route, version=record.version, module_ids=(module_id,),
            )  # fmt: skip
            return quarantined

    async def put_route_rules(
        self, rule_set: RuleSet, *, expected_version: int | None = None, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> RuleSet:
        async with self._lock:
            versions = self.rule_sets.setdefault(rule_set.tenant_id, [])
            check_rules_version(rule_set.tenant_id, expected_version, len(versions))
            stored = dataclasses.replace(rule_set, version=len(versions) + 1, updated_at=datetime.now(UTC))
            versions.append(stored)
            event = routes_event(stored)
            self.events.append(event)
            self._audit(
                AuditAction.PUT_ROUTE_RULES, by, event_id=event.event_id, tenant_id=stored.tenant_id,
                version=stored.version, module_ids=(),
            )  # fmt: skip
            return stored

    async def get_route_rules(self, tenant_id: str, version: int | None = None) -> RuleSet:
        versions = self.rule_sets.get(tenant_id, [])
        if version is None:
            return versions[-1] if versions else RuleSet(tenant_id=tenant_id, version=0)
        if not 1 <= version <= len(versions):
            raise RegistryNotFoundError(f"tenant {tenant_id} has no route rules version {version}")
        return versions[version - 1]

    async def resolve_route(self, tenant_id: str, route: str) -> RouteResolution:
        module_id = self.routes.get((tenant_id, route))
        if module_id is None:
            raise RegistryNotFoundError(f"route {tenant_id}/{route} has no published module")
        chain = [self._get(module_id)]
        while chain[0].parent_id is not None:
            chain.insert(0, self._get(chain[0].parent_id))
        assert chain[-1].version is not None
        return RouteResolution(tenant_id=tenant_id, route=route, version=chain[-1].version, chain=chain)

    async def invalidate(
        self, trigger: Trigger, *, event_id: str, consumer: str = "registry", by: Attribution = SYSTEM_ATTRIBUTION
    ) -> list[ModuleRecord]:
        async with self._lock:
            if (consumer, event_id) in self.processed:
                return []
            self.processed.add((consumer, event_id))
            now, reason = datetime.now(UTC), trigger_reason(trigger, by.note)
            changed = []
            for module_id, state in sorted(affected_modules(self.modules.values(), trigger).items()):
                record = dataclasses.replace(
                    self.modules[module_id], state=state, state_reason=reason, state_changed_at=now
                )
                self._set(record, trigger_event_id=event_id)
                changed.append(record)
            self._audit(
                AuditAction.INVALIDATE, by, event_id=event_id, tenant_id=self._trigger_tenant(trigger),
                module_ids=tuple(r.module_id for r in changed), trigger=trigger_reason(trigger),
            )  # fmt: skip
            return changed

    def _trigger_tenant(self, trigger: Trigger) -> str:
        tenant = trigger_tenant(trigger)
        if tenant is None and isinstance(trigger, ModuleWithdrawn) and trigger.module_id in self.modules:
            tenant = self.modules[trigger.module_id].metadata.tenant_id
        return EVERY_TENANT if tenant is None else tenant

    async def rollback(
        self, tenant_id: str, route: str, to_version: int, *, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> ModuleRecord:
        if to_version < 1:
            raise InvalidFieldError("to_version", f"must be a published version (>= 1), got {to_version}")
        async with self._lock:
            matches = [
                r
                for r in self.modules.values()
                if (r.metadata.tenant_id, r.metadata.route, r.version) == (tenant_id, route, to_version)
            ]
            if not matches:
                raise RegistryNotFoundError(f"route {tenant_id}/{route} has no version {to_version}")
            record = matches[0]
            if record.state is not ModuleState.PUBLISHED:
                raise IllegalTransitionError(
                    f"module {record.module_id} (version {to_version}) is {record.state.value}; it cannot be served"
                )
            self.routes[(tenant_id, route)] = record.module_id
            change = self._set(record, reason=rollback_reason(to_version, by.note))
            self._audit(
                AuditAction.ROLLBACK, by, event_id=change.event_id, tenant_id=tenant_id, route=route,
                version=to_version, module_ids=(record.module_id,),
            )  # fmt: skip
            return record

    async def record_route_decision(self, decision: RouteDecision) -> bool:
        if decision.event_id in self.decisions:
            return False
        self.decisions[decision.event_id] = decision
        return True

    async def route_decisions(self, tenant_id: str, *, limit: int = 100) -> list[RouteDecision]:
        mine = [d for d in reversed(self.decisions.values()) if d.tenant_id == tenant_id]
        return mine[:limit]

    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditEntry], str]:
        before = query.before
        rows = [
            e
            for e in reversed(self.audit)
            if (query.tenant_id is None or e.tenant_id == query.tenant_id) and (before is None or e.sequence < before)
        ]
        page = rows[: query.page_size]
        return page, encode_audit_token(page[-1].sequence) if len(rows) > query.page_size else ""

    async def changes_since(
        self, sequence: int, *, tenant_id: str | None = None, limit: int = 100
    ) -> list[ModuleChange]:
        tenants = None if tenant_id is None else {tenant_id, PUBLIC_TENANT}
        feed = [c for c in self.outbox if c.sequence > sequence and (tenants is None or c.tenant_id in tenants)]
        return feed[:limit]
