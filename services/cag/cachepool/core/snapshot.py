"""What the registry says about modules, as the cache pool serves from it: a snapshot of module states built
from the registry's change feed (Watch, from sequence 0) and its events, plus the records fetched on first use.

Only PUBLISHED modules are served. A module the feed or an event took out of service (invalidated, expired,
quarantined, stale, retired) stays out: the feed never publishes a module id again once it left, and an
event may overtake the feed, so an older PUBLISHED replayed after it must not revive the module.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cag.acl import AclScope
from cag.errors import (
    ChainError,
    InvalidFieldError,
    ModuleNotServableError,
    PermissionDeniedError,
    UnavailableError,
)
from cag.identifiers import check_module_id

# A chain longer than this is no hierarchy the platform builds (system → tools → domain → session).
MAX_CHAIN = 16


class ModuleState(StrEnum):
    """common.proto's ModuleState without its UNSPECIFIED."""

    BUILDING = "building"
    VALIDATING = "validating"
    PUBLISHED = "published"
    STALE = "stale"
    INVALIDATED = "invalidated"
    EXPIRED = "expired"
    QUARANTINED = "quarantined"
    RETIRED = "retired"


@dataclass(frozen=True, kw_only=True)
class ModuleRecord:
    """The registry's record of a module, as far as serving it needs."""

    module_id: str
    tenant_id: str
    acl_scope: AclScope
    version: int
    state: ModuleState
    storage_uri: str
    tensor_checksum: str
    header_sha256: str
    token_count: int
    parent_id: str  # "" for a root
    parent_chain_hash: str
    chain_hash: str
    model_name: str
    layout_hash: str
    # The layout itself, canonical JSON: the query is rendered with the leaf's before anything is loaded.
    layout: str

    def visible_to(self, tenant_id: str) -> bool:
        return self.acl_scope is AclScope.PUBLIC or self.tenant_id == tenant_id


@dataclass(frozen=True, kw_only=True)
class StateChange:
    """One change of the registry feed (or one module event): `module_id` entered `state`."""

    module_id: str
    state: ModuleState
    version: int = 0


class RegistrySnapshot:
    """Module states from the feed and events, the records fetched so far, and whether the feed caught up."""

    def __init__(self) -> None:
        self.caught_up = False
        self._states: dict[str, ModuleState] = {}
        self._withdrawn: set[str] = set()
        self._records: dict[str, ModuleRecord] = {}

    def apply(self, change: StateChange) -> bool:
        """Applies a change; True when it takes a module out of service (the pool then drops it everywhere).
        Idempotent: a change seen twice (the feed and an event) withdraws the module once."""
        if change.module_id in self._withdrawn:
            return False
        self._states[change.module_id] = change.state
        if change.state is ModuleState.PUBLISHED:
            return False
        self._withdrawn.add(change.module_id)
        return True

    def mark_caught_up(self) -> None:
        self.caught_up = True

    def remember(self, record: ModuleRecord) -> None:
        """Keeps a record fetched from the registry (what the feed says of its state wins over the record's)."""
        self._records[record.module_id] = record

    def record(self, module_id: str) -> ModuleRecord | None:
        return self._records.get(module_id)

    def state_of(self, module_id: str) -> ModuleState | None:
        """The module's state as the feed and events tell it; None when they never mentioned it."""
        if module_id in self._withdrawn:
            return self._states.get(module_id, ModuleState.INVALIDATED)
        return self._states.get(module_id)

    def is_withdrawn(self, module_id: str) -> bool:
        return module_id in self._withdrawn

    def require_ready(self) -> None:
        if not self.caught_up:
            raise UnavailableError(
                "the cache pool is starting: it serves once it has the registry's snapshot of published modules; "
                "try again shortly"
            )

    def require_servable(self, record: ModuleRecord) -> None:
        """ModuleNotServableError unless the module is PUBLISHED (by the feed, else by its record)."""
        state = self.state_of(record.module_id) or record.state
        if state is not ModuleState.PUBLISHED:
            raise ModuleNotServableError(
                f"module {record.module_id} is {state.value}, not published: it is not served",
                module=record.module_id,
                state=state.value,
            )


def check_module_ids(module_ids: Sequence[str], field: str = "module_ids") -> list[str]:
    """The request's chain ids, each well formed, 1..MAX_CHAIN of them, none twice (InvalidFieldError)."""
    if not module_ids:
        raise InvalidFieldError(field, "must name at least one module (the chain, root first)")
    if len(module_ids) > MAX_CHAIN:
        raise InvalidFieldError(field, f"names {len(module_ids)} modules; a chain has at most {MAX_CHAIN}")
    for i, module_id in enumerate(module_ids):
        check_module_id(module_id, f"{field}[{i}]")
    if len(set(module_ids)) != len(module_ids):
        raise InvalidFieldError(field, "names a module twice")
    return list(module_ids)


def check_visible(records: Sequence[ModuleRecord], tenant_id: str) -> None:
    """Every module is public or `tenant_id`'s: PermissionDeniedError naming no module otherwise (the caller must
    not learn which of another tenant's modules exist)."""
    if not all(r.visible_to(tenant_id) for r in records):
        raise PermissionDeniedError(f"the chain holds a module tenant {tenant_id!r} may not use")


def check_chain(records: Sequence[ModuleRecord]) -> None:
    """The modules form one chain, root first and complete (ChainError)."""
    if records[0].parent_id:
        raise ChainError(
            f"module {records[0].module_id} is not a root (its parent is {records[0].parent_id}): give the whole "
            "chain, root first"
        )
    for parent, child in itertools.pairwise(records):
        if child.parent_id != parent.module_id or child.parent_chain_hash != parent.chain_hash:
            raise ChainError(
                f"module {child.module_id} does not follow {parent.module_id} (its parent is "
                f"{child.parent_id or 'none'}): give the chain root first, each module after its parent"
            )
