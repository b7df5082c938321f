"""The registry store interface: persistence with state changes and their events in one transaction.

Two implementations: `PostgresStore` (production) and `MemoryStore` (a stateful fake for unit
tests). The conformance suite in tests/ runs the same scenarios against both.
"""

from __future__ import annotations

import base64
import binascii
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

from cag.errors import CagError, InvalidFieldError, Status
from cag.events.schemas import (
    Envelope,
    ModuleEventV1,
    ModuleExpiredV1,
    ModuleInvalidatedV1,
    ModulePublishedV1,
    RoutesUpdatedV1,
)
from cag.identifiers import MODULE_ID
from cag.registry.core.audit import EVERY_TENANT, SYSTEM_ATTRIBUTION, Attribution, AuditEntry, AuditQuery
from cag.registry.core.records import ModuleChange, ModuleRecord, RouteDecision
from cag.registry.core.route_rules import RuleSet, RuleSetVersionConflictError
from cag.registry.core.states import ModuleState
from cag.registry.core.triggers import AclChanged, ModuleWithdrawn, SourceChanged, Trigger

MAX_PAGE_SIZE = 1000


class RegistryNotFoundError(CagError):
    status = Status.NOT_FOUND
    reason = "REGISTRY_NOT_FOUND"


class ConcurrentPublishError(CagError):
    """Another publish took the same route version first; the loser changes nothing."""

    status = Status.ABORTED
    reason = "CONCURRENT_PUBLISH"


class AlreadyRegisteredError(CagError):
    status = Status.ALREADY_EXISTS
    reason = "ALREADY_REGISTERED"


@dataclass(frozen=True, kw_only=True)
class ListQuery:
    tenant_id: str | None = None
    route: str | None = None
    state: ModuleState | None = None
    model_name: str | None = None
    layout_id: str | None = None
    page_size: int = 100
    page_token: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise InvalidFieldError("page_size", f"must be between 1 and {MAX_PAGE_SIZE}, got {self.page_size}")

    @property
    def after(self) -> str | None:
        return decode_page_token(self.page_token)


def encode_page_token(last_module_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "after": last_module_id}).encode()).decode()


def decode_page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = body["after"] if isinstance(body, dict) and body.get("v") == 1 else None
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        after = None
    # The token is the client's to send back: what it decodes to is checked like any module id.
    if not isinstance(after, str) or not MODULE_ID.fullmatch(after):
        raise InvalidFieldError("page_token", "is malformed: pass back the next_page_token of a previous List")
    return after


@dataclass(frozen=True, kw_only=True)
class RouteResolution:
    tenant_id: str
    route: str
    version: int
    chain: list[ModuleRecord]  # root first; the last one is the route's module


_EVENT_OF_STATE: dict[ModuleState, type[ModuleEventV1]] = {
    ModuleState.PUBLISHED: ModulePublishedV1,
    ModuleState.EXPIRED: ModuleExpiredV1,
}


def module_event(record: ModuleRecord, *, reason: str = "", trigger_event_id: str = "") -> Envelope:
    """The event announcing a module's new state (stale, invalidated and quarantined are 'invalidated')."""
    payload_type = _EVENT_OF_STATE.get(record.state, ModuleInvalidatedV1)
    m = record.metadata
    return Envelope.wrap(
        payload_type(
            module_id=m.module_id,
            tenant_id=m.tenant_id,
            route=m.route,
            version=record.version,
            state=record.state.value,
            reason=reason or record.state_reason,
            chain_hash=m.chain_hash,
            trigger_event_id=trigger_event_id,
        )
    )


def routes_event(rule_set: RuleSet) -> Envelope:
    """The event telling routers that a tenant's rules changed (they fetch the version it names)."""
    return Envelope.wrap(RoutesUpdatedV1(tenant_id=rule_set.tenant_id, version=rule_set.version))


def check_rules_version(tenant_id: str, expected: int | None, current: int) -> None:
    if expected is not None and expected != current:
        raise RuleSetVersionConflictError(
            f"the route rules of tenant {tenant_id} are at version {current}, not {expected}: read them again"
        )


def registered_as(record: ModuleRecord) -> tuple[ModuleState, str]:
    """The state (and state reason) a registration enters: QUARANTINED when the record asks for it (a module kept
    for inspection, never servable), else VALIDATING; registry-owned states in a request are ignored."""
    if record.state is ModuleState.QUARANTINED:
        return ModuleState.QUARANTINED, record.state_reason
    return ModuleState.VALIDATING, ""


def file_identity(record: ModuleRecord) -> tuple[str, str]:
    """What pins a module's file: its tensors and its header. A registration repeats a stored one only when
    both match (a re-signed header under a known id is another file, never a silent no-op)."""
    return record.metadata.tensor_checksum, record.header_sha256


def check_expected_version(module_id: str, expected: int | None, next_version: int) -> None:
    if expected is not None and expected != next_version:
        raise ConcurrentPublishError(
            f"module {module_id}: route version {expected} is taken (next is {next_version}); re-read and retry"
        )


def rollback_reason(to_version: int, note: str = "") -> str:
    return f"rollback to version {to_version}" + (f" — {note}" if note else "")


def trigger_reason(trigger: Trigger, note: str = "") -> str:
    """`<kind>: <trigger>`, then who asked and why when known (`— by service:ops: reason`)."""
    return f"{trigger.kind}: {trigger}" + (f" — {note}" if note else "")


def trigger_tenant(trigger: Trigger) -> str | None:
    """The tenant an invalidation is audited under: the trigger's own, EVERY_TENANT for triggers that reach every
    tenant, None for ModuleWithdrawn (the store knows its module's tenant)."""
    match trigger:
        case SourceChanged() | AclChanged():
            return trigger.tenant_id
        case ModuleWithdrawn():
            return None
    return EVERY_TENANT


class RegistryStore(ABC):
    @abstractmethod
    async def register(self, record: ModuleRecord) -> ModuleRecord:
        """Insert a module in state VALIDATING (or QUARANTINED, see `registered_as`); re-registering identical
        content returns the existing row."""

    @abstractmethod
    async def get(self, module_id: str) -> ModuleRecord: ...

    @abstractmethod
    async def list_modules(self, query: ListQuery) -> tuple[list[ModuleRecord], str]:
        """A page of modules ordered by id, and the token of the next page ('' at the end)."""

    @abstractmethod
    async def publish(
        self, module_id: str, *, expected_version: int | None = None, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> ModuleRecord:
        """VALIDATING → PUBLISHED with the route's next version, made the route's active version, and an audit
        entry for `by` in the same transaction (none when the module was already published).

        With `expected_version`, the publish happens only if that is the route's next version. Its event's
        reason is `published by <actor>`.
        """

    @abstractmethod
    async def quarantine(self, module_id: str, reason: str, *, by: Attribution = SYSTEM_ATTRIBUTION) -> ModuleRecord:
        """→ QUARANTINED with `reason`, its event and an audit entry for `by`; nothing changes (and nothing is
        written) for a module already QUARANTINED."""

    @abstractmethod
    async def put_route_rules(
        self, rule_set: RuleSet, *, expected_version: int | None = None, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> RuleSet:
        """Store `rule_set` as its tenant's next version, with a cag.routes.updated event and an audit entry in the
        same transaction. RuleSetVersionConflictError when `expected_version` is given and is not the current one
        (or another writer took the next version first)."""

    @abstractmethod
    async def get_route_rules(self, tenant_id: str, version: int | None = None) -> RuleSet:
        """The newest version (or `version`); version 0 and no rules when the tenant has none. RegistryNotFoundError
        for a version that does not exist."""

    @abstractmethod
    async def resolve_route(self, tenant_id: str, route: str) -> RouteResolution: ...

    @abstractmethod
    async def invalidate(
        self, trigger: Trigger, *, event_id: str, consumer: str = "registry", by: Attribution = SYSTEM_ATTRIBUTION
    ) -> list[ModuleRecord]:
        """Apply a trigger once per (consumer, event_id); returns the modules whose state changed. Who and why
        (`by`) are appended to each module's state reason, and the first application is audited under
        `event_id` (even when it changes nothing; a redelivery adds no entry)."""

    @abstractmethod
    async def rollback(
        self, tenant_id: str, route: str, to_version: int, *, by: Attribution = SYSTEM_ATTRIBUTION
    ) -> ModuleRecord:
        """Point the route at a published earlier version; who and why (`by`) go into its event's reason and
        into an audit entry written in the same transaction."""

    @abstractmethod
    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditEntry], str]:
        """A page of the audit trail, newest first, and the token of the next page ('' at the end). With a
        tenant, only that tenant's entries (not the EVERY_TENANT ones)."""

    @abstractmethod
    async def record_route_decision(self, decision: RouteDecision) -> bool:
        """Append to the audit trail; False (and no change) when that event id is already recorded."""

    @abstractmethod
    async def route_decisions(self, tenant_id: str, *, limit: int = 100) -> list[RouteDecision]:
        """A tenant's most recent decisions, newest first."""

    @abstractmethod
    async def changes_since(
        self, sequence: int, *, tenant_id: str | None = None, limit: int = 100
    ) -> list[ModuleChange]:
        """The change feed (the outbox) after `sequence`, oldest first."""
