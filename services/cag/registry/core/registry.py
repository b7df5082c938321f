"""The registry's rules on top of a store: who may do what, what may be registered, published, invalidated,
rolled back.

Pure of gRPC and NATS: the servicer and the event handlers are thin adapters over this. The registry
never opens module files: it keeps their checksums, and whoever serves a module (the cache pool, `cag
query --registry`) checks the file against this record before using a byte of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import uuid
from collections.abc import Sequence

from cag.acl import PUBLIC_TENANT, visible_within
from cag.auth import Caller, Scope
from cag.canonical import compact_json
from cag.errors import (
    CagError,
    ChainError,
    InvalidFieldError,
    ModuleMismatchError,
    ModuleNotServableError,
    Status,
)
from cag.identifiers import check_module_id, check_name
from cag.metadata import GoldenStatus, ModuleMetadata
from cag.registry.core.audit import Attribution, AuditEntry, AuditQuery
from cag.registry.core.records import ModuleChange, ModuleRecord, RouteDecision
from cag.registry.core.route_rules import RouteInfo, RouteRule, RuleSet, checked_rule_set
from cag.registry.core.states import ModuleState
from cag.registry.core.store import ConcurrentPublishError, ListQuery, RegistryStore, RouteResolution
from cag.registry.core.triggers import AclChanged, ModuleWithdrawn, SourceChanged, Trigger
from cag.source_roots import SourceRoots

# "Publish the next version" retries when another publisher took that version between its read and its
# write: it must succeed exactly once per call however many publish at once.
PUBLISH_ATTEMPTS = 20
PUBLISH_BACKOFF_S = 0.005


class PublishRefusedError(CagError):
    status = Status.FAILED_PRECONDITION
    reason = "PUBLISH_REFUSED"


def canonical_layout_hash(layout: str) -> str:
    """sha256 hex of the layout's canonical JSON: what the compiler's `layout_hash` covers."""
    return hashlib.sha256(compact_json(json.loads(layout)).encode()).hexdigest()


def _check_chain_link(parent: ModuleRecord, child: ModuleMetadata) -> None:
    p = parent.metadata
    if not visible_within(p, child):
        raise ChainError(
            f"module {child.module_id} ({child.acl_scope.value} of tenant {child.tenant_id}) cannot extend"
            f" {p.module_id} ({p.acl_scope.value} of tenant {p.tenant_id}): a parent must be public or within"
            " the child's own scope"
        )
    holder = f"its parent {p.module_id} has"
    if child.parent_chain_hash != p.chain_hash:
        raise ModuleMismatchError(
            "parent_chain_hash", p.chain_hash, str(child.parent_chain_hash), module=child.module_id, expected_by=holder
        )
    for field in ("model_name", "model_revision", "tokenizer_revision", "dtype", "engine_fingerprint", "layout_hash"):
        if getattr(p, field) != getattr(child, field):
            raise ModuleMismatchError(
                field, getattr(p, field), getattr(child, field), module=child.module_id, expected_by=holder
            )


class RegistryCore:
    """`source_roots`: where each tenant's sources may live (cag.source_roots); None: anywhere."""

    def __init__(self, store: RegistryStore, source_roots: SourceRoots | None = None) -> None:
        self.store = store
        self.source_roots = source_roots

    async def register(self, caller: Caller, record: ModuleRecord) -> ModuleRecord:
        m = record.metadata
        check_module_id(m.module_id)
        check_name("tenant_id", m.tenant_id)
        check_name("route", m.route)
        caller.require(Scope.WRITE, m.tenant_id)
        if not record.source_uri:
            raise InvalidFieldError("source_uri", "is required: invalidation by source needs to know its origin")
        if self.source_roots is not None:
            # Else a writer of one tenant records another tenant's source, which the fallback then indexes for it.
            self.source_roots.check(record.source_uri, m.tenant_id)
        if canonical_layout_hash(m.layout) != m.layout_hash:
            # Layouts are stored once per hash and shared by every tenant: a hash that is not the text's own
            # would let one tenant plant the layout another tenant's modules are served with.
            raise InvalidFieldError("layout_hash", "is not the SHA-256 of the layout's canonical JSON")
        if m.parent_id is not None:
            parent = await self.store.get(check_module_id(m.parent_id, "parent_id"))
            _check_chain_link(parent, m)
        if m.golden_status is GoldenStatus.FAILED:
            # Compiled with --keep-failed: recorded for inspection, never publishable.
            failed = sum(not r.get("passed", False) for r in json.loads(m.golden_results or "[]"))
            reason = f"golden tests failed ({failed} question(s)); kept for inspection"
            record = dataclasses.replace(record, state=ModuleState.QUARANTINED, state_reason=reason)
        return await self.store.register(record)

    async def get(self, caller: Caller, module_id: str) -> ModuleRecord:
        record = await self.store.get(check_module_id(module_id))
        if record.metadata.tenant_id != PUBLIC_TENANT:  # public modules are readable by everyone
            caller.require(Scope.READ, record.metadata.tenant_id)
        return record

    async def list_modules(self, caller: Caller, query: ListQuery) -> tuple[list[ModuleRecord], str]:
        if query.tenant_id is None:
            if caller.readable_tenants() is not None:
                raise InvalidFieldError("tenant_id", f"is required: {caller.subject} may not list every tenant")
        elif query.tenant_id != PUBLIC_TENANT:
            caller.require(Scope.READ, query.tenant_id)
        return await self.store.list_modules(query)

    async def publish(self, caller: Caller, module_id: str, *, expected_version: int | None = None) -> ModuleRecord:
        record = await self.store.get(check_module_id(module_id))
        caller.require(Scope.WRITE, record.metadata.tenant_id)
        if record.state is ModuleState.PUBLISHED:
            return record
        if record.metadata.golden_status is not GoldenStatus.PASSED:
            raise PublishRefusedError(
                f"module {module_id} cannot be published: golden tests {record.metadata.golden_status.value}"
                " (publishing needs passed golden results)"
            )
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                return await self.store.publish(
                    module_id, expected_version=expected_version, by=Attribution(actor=caller.subject)
                )
            except ConcurrentPublishError:
                if expected_version is not None or attempt == PUBLISH_ATTEMPTS - 1:
                    raise  # the caller asked for that exact version: losing the race is its answer
                await asyncio.sleep(random.uniform(0, PUBLISH_BACKOFF_S * 2 ** min(attempt, 6)))
        raise AssertionError("unreachable")

    async def resolve_route(self, caller: Caller, tenant_id: str, route: str) -> RouteResolution:
        check_name("tenant_id", tenant_id)
        check_name("route", route)
        caller.require(Scope.READ, tenant_id)
        resolution = await self.store.resolve_route(tenant_id, route)
        unservable = [r for r in resolution.chain if r.state is not ModuleState.PUBLISHED]
        if unservable:
            bad = unservable[0]
            raise ModuleNotServableError(
                f"route {tenant_id}/{route} v{resolution.version}: module {bad.module_id} is {bad.state.value}"
                f" ({bad.state_reason}); serve from fallback until it is rebuilt",
                module=bad.module_id,
                state=bad.state.value,
            )
        leaf = resolution.chain[-1].metadata
        foreign = [r.module_id for r in resolution.chain[:-1] if not visible_within(r.metadata, leaf)]
        if foreign:  # registration refuses such chains; this guards rows written before it did
            raise ChainError(f"route {tenant_id}/{route}: module(s) {', '.join(foreign)} are outside its scope")
        return resolution

    async def invalidate(
        self, caller: Caller, trigger: Trigger, *, event_id: str | None = None, reason: str = ""
    ) -> tuple[str, list[ModuleRecord]]:
        """Apply `trigger` once per event id; `reason` (why, from the caller) joins each module's state reason."""
        await self._authorize_trigger(caller, trigger)
        event = event_id or str(uuid.uuid4())
        by = Attribution(actor=caller.subject, reason=reason)
        return event, await self.store.invalidate(trigger, event_id=event, by=by)

    async def _authorize_trigger(self, caller: Caller, trigger: Trigger) -> None:
        """Tenant-scoped triggers need write on that tenant; model, tokenizer and layout revisions reach every
        tenant and need admin."""
        match trigger:
            case SourceChanged() | AclChanged():
                caller.require(Scope.WRITE, trigger.tenant_id)
            case ModuleWithdrawn():
                record = await self.store.get(check_module_id(trigger.module_id))
                caller.require(Scope.WRITE, record.metadata.tenant_id)
            case _:
                caller.require_admin(f"apply a {trigger.kind} trigger (it reaches every tenant)")

    async def rollback(
        self, caller: Caller, tenant_id: str, route: str, to_version: int, *, reason: str = ""
    ) -> ModuleRecord:
        check_name("tenant_id", tenant_id)
        check_name("route", route)
        caller.require(Scope.WRITE, tenant_id)
        by = Attribution(actor=caller.subject, reason=reason)
        return await self.store.rollback(tenant_id, route, to_version, by=by)

    async def quarantine(self, caller: Caller, module_id: str, *, reason: str) -> ModuleRecord:
        """A copy of the module failed verification where it is served: it is never served again."""
        record = await self.store.get(check_module_id(module_id))
        caller.require(Scope.QUARANTINE, record.metadata.tenant_id)
        if not reason:
            raise InvalidFieldError("reason", "is required: say what failed, and where")
        return await self.store.quarantine(module_id, reason, by=Attribution(actor=caller.subject, reason=reason))

    async def put_route_rules(
        self,
        caller: Caller,
        tenant_id: str,
        rules: Sequence[RouteRule],
        routes: Sequence[RouteInfo],
        *,
        expected_version: int | None = None,
        reason: str = "",
    ) -> RuleSet:
        rule_set = checked_rule_set(tenant_id, rules, routes)
        caller.require(Scope.WRITE, tenant_id)
        by = Attribution(actor=caller.subject, reason=reason)
        return await self.store.put_route_rules(rule_set, expected_version=expected_version, by=by)

    async def get_route_rules(self, caller: Caller, tenant_id: str, version: int | None = None) -> RuleSet:
        caller.require(Scope.READ, check_name("tenant_id", tenant_id))
        return await self.store.get_route_rules(tenant_id, version)

    async def list_audit(self, caller: Caller, query: AuditQuery) -> tuple[list[AuditEntry], str]:
        """The audit trail, newest first; authorized as `list_modules` is (the entries of changes that reach
        every tenant are listed only without a tenant, to callers who may read every tenant)."""
        if query.tenant_id is None:
            if caller.readable_tenants() is not None:
                raise InvalidFieldError("tenant_id", f"is required: {caller.subject} may not list every tenant")
        elif query.tenant_id != PUBLIC_TENANT:
            caller.require(Scope.READ, check_name("tenant_id", query.tenant_id))
        return await self.store.list_audit(query)

    async def record_route_decision(self, decision: RouteDecision) -> bool:
        return await self.store.record_route_decision(decision)

    async def changes_since(
        self, caller: Caller, sequence: int, *, tenant_id: str | None = None, limit: int = 100
    ) -> list[ModuleChange]:
        if sequence < 0:
            raise InvalidFieldError("since_sequence", f"must be >= 0, got {sequence}")
        if tenant_id is None:
            if caller.readable_tenants() is not None:
                raise InvalidFieldError("tenant_id", f"is required: {caller.subject} may not watch every tenant")
        else:
            caller.require(Scope.READ, check_name("tenant_id", tenant_id))
        return await self.store.changes_since(sequence, tenant_id=tenant_id, limit=limit)
