"""Who may load a module: the ACL scopes and the rule that a module chain never widens its audience (torch-free)."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

# The tenant id of modules compiled with the public scope: visible to every tenant.
PUBLIC_TENANT = "public"


class AclScope(StrEnum):
    PUBLIC = "public"
    TENANT = "tenant"
    WORKSPACE = "workspace"
    USER = "user"


class Scoped(Protocol):
    """Anything with an audience: module metadata, a registry record's metadata."""

    @property
    def acl_scope(self) -> AclScope: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def acl_principal(self) -> str: ...


def visible_within(parent: Scoped, child: Scoped) -> bool:
    """Whether everyone who may load `child` may also load `parent`: a chain never adds another tenant's (or
    another workspace's, another user's) knowledge to a module's audience."""
    if parent.acl_scope is AclScope.PUBLIC:
        return True
    if parent.tenant_id != child.tenant_id or child.acl_scope is AclScope.PUBLIC:
        return False
    if parent.acl_scope is AclScope.TENANT:
        return True
    return (parent.acl_scope, parent.acl_principal) == (child.acl_scope, child.acl_principal)
