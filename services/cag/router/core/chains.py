"""Module chains as the router's snapshot holds them, and the ACL rule that decides who may be served one."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from cag.acl import AclScope

PUBLISHED = "published"

# Why a module in each state is not served, as the decision's reason says it (module ids are never named:
# a chain may hold another tenant's public parent, and the reason is shown to the caller).
_NOT_SERVABLE = {
    "stale": "module stale: source changed",
    "invalidated": "module invalidated: its model, tokenizer, layout, ACL or parent changed",
    "expired": "module expired",
    "quarantined": "module quarantined: it failed verification",
    "retired": "module retired",
    "building": "module not published yet",
    "validating": "module not published yet",
}


def not_servable_reason(state: str) -> str:
    return _NOT_SERVABLE.get(state, f"module {state}")


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who a chain is checked against: the tenant answered for, and the caller's workspace and user inside it
    (None when the caller names none, or names them in another tenant)."""

    tenant_id: str
    workspace: str | None = None
    user: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModuleLink:
    """One module of a resolved chain: its version, audience and state."""

    module_id: str
    version: int
    acl_scope: AclScope
    tenant_id: str
    acl_principal: str  # workspace or user id for those scopes, else ""
    state: str = PUBLISHED

    def visible_to(self, who: Principal) -> bool:
        """Public modules to anyone; the others only inside their tenant, and workspace or user modules only
        to that workspace or user."""
        if self.acl_scope is AclScope.PUBLIC:
            return True
        if self.tenant_id != who.tenant_id:
            return False
        if self.acl_scope is AclScope.TENANT:
            return True
        if self.acl_scope is AclScope.WORKSPACE:
            return who.workspace is not None and self.acl_principal == who.workspace
        if self.acl_scope is AclScope.USER:
            return who.user is not None and self.acl_principal == who.user
        return False  # a scope this build does not know: fail closed


class RouteStatus(StrEnum):
    SERVABLE = "servable"
    NOT_SERVABLE = "not-servable"  # a module of the chain left PUBLISHED: fallback
    ABSENT = "absent"  # the route has no published module


@dataclass(frozen=True, kw_only=True)
class RouteEntry:
    """What the snapshot knows of (tenant_id, route): the chain that serves it, root first, and whether it can.

    A NOT_SERVABLE entry keeps the chain it last had (when known), so that its ACL is still checked and a
    change of any of its modules reaches it; `problem` says why it cannot be served.
    """

    tenant_id: str
    route: str
    status: RouteStatus
    chain: tuple[ModuleLink, ...] = ()
    route_version: int = 0
    problem: str = ""

    @property
    def module_ids(self) -> tuple[str, ...]:
        return tuple(link.module_id for link in self.chain)

    def visible_to(self, who: Principal) -> bool:
        return all(link.visible_to(who) for link in self.chain)

    def withdrawn(self, module_id: str, state: str) -> RouteEntry:
        """This entry after `module_id` of its chain left PUBLISHED for `state`."""
        chain = tuple(replace(link, state=state) if link.module_id == module_id else link for link in self.chain)
        return replace(self, status=RouteStatus.NOT_SERVABLE, chain=chain, problem=not_servable_reason(state))
