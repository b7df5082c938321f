"""Invalidation triggers (ARCHITECTURE §Invalidation) and the pure rule deciding what each one hits.

A trigger selects modules by a predicate on their metadata; the affected set is the
selected live modules plus every live descendant in their chains (a child's KV was
computed on top of its parent's, so it cannot outlive it). The Postgres repository
implements the same rule in SQL; the conformance suite checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cag.acl import AclScope
from cag.errors import InvalidFieldError
from cag.registry.core.records import ModuleRecord
from cag.registry.core.states import ALLOWED, LIVE, ModuleState


@dataclass(frozen=True, kw_only=True)
class SourceChanged:
    """A source's content changed: modules built from an older checksum go stale (and are recompiled)."""

    tenant_id: str
    source_uri: str
    checksum: str
    kind = "source"
    target = ModuleState.STALE

    def selects(self, r: ModuleRecord) -> bool:
        m = r.metadata
        return m.tenant_id == self.tenant_id and r.source_uri == self.source_uri and m.source_checksum != self.checksum


@dataclass(frozen=True, kw_only=True)
class ModelRevised:
    """A model has a new revision: every module of that model built from another revision is invalid."""

    model_name: str
    model_revision: str
    kind = "model"
    target = ModuleState.INVALIDATED

    def selects(self, r: ModuleRecord) -> bool:
        return r.metadata.model_name == self.model_name and r.metadata.model_revision != self.model_revision


@dataclass(frozen=True, kw_only=True)
class TokenizerRetired:
    """A tokenizer revision is withdrawn: every module tokenized with it is invalid."""

    tokenizer_revision: str
    kind = "tokenizer"
    target = ModuleState.INVALIDATED

    def selects(self, r: ModuleRecord) -> bool:
        return r.metadata.tokenizer_revision == self.tokenizer_revision


@dataclass(frozen=True, kw_only=True)
class AclChanged:
    """An ACL policy changed: private modules of that scope are denied at once (public ones are untouched)."""

    tenant_id: str
    scope: AclScope
    principal: str = ""  # empty: every workspace/user of the scope
    kind = "acl"
    target = ModuleState.INVALIDATED

    def __post_init__(self) -> None:
        if self.scope is AclScope.PUBLIC:
            raise InvalidFieldError("scope", "must be a private scope (tenant, workspace or user), not public")

    def selects(self, r: ModuleRecord) -> bool:
        m = r.metadata
        return (
            m.tenant_id == self.tenant_id
            and m.acl_scope is self.scope
            and (not self.principal or m.acl_principal == self.principal)
        )


@dataclass(frozen=True, kw_only=True)
class LayoutChanged:
    """A layout has a new version: modules of that layout id built with another hash are invalid."""

    layout_id: str
    layout_hash: str
    kind = "layout"
    target = ModuleState.INVALIDATED

    def selects(self, r: ModuleRecord) -> bool:
        return r.metadata.layout_id == self.layout_id and r.metadata.layout_hash != self.layout_hash


@dataclass(frozen=True, kw_only=True)
class ModuleWithdrawn:
    """An operator invalidates one module by id."""

    module_id: str
    kind = "module"
    target = ModuleState.INVALIDATED

    def selects(self, r: ModuleRecord) -> bool:
        return r.module_id == self.module_id


@dataclass(frozen=True, kw_only=True)
class TtlElapsed:
    """The TTL job: modules whose expires_at has passed expire."""

    now: datetime
    kind = "ttl"
    target = ModuleState.EXPIRED

    def selects(self, r: ModuleRecord) -> bool:
        expires = r.metadata.expires_at
        return expires is not None and datetime.fromisoformat(expires) <= self.now


Trigger = SourceChanged | ModelRevised | TokenizerRetired | AclChanged | LayoutChanged | ModuleWithdrawn | TtlElapsed


def affected_modules(records: Iterable[ModuleRecord], trigger: Trigger) -> dict[str, ModuleState]:
    """module_id → new state for every module the trigger hits, descendants included."""
    by_id = {r.module_id: r for r in records}
    children: dict[str, list[str]] = {}
    for r in by_id.values():
        if r.parent_id is not None:
            children.setdefault(r.parent_id, []).append(r.module_id)
    hit = {r.module_id for r in by_id.values() if trigger.selects(r)}
    frontier = list(hit)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in hit:
                hit.add(child)
                frontier.append(child)
    return {
        module_id: trigger.target
        for module_id in hit
        if by_id[module_id].state in LIVE and trigger.target in ALLOWED[by_id[module_id].state]
    }
