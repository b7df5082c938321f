"""The authenticated caller of an RPC and the permission checks every service core applies.

A caller holds scopes (what kind of operation) and tenants (on whose data). Reading a tenant's
modules needs `read` on that tenant; registering, publishing, rolling back and tenant-scoped
invalidations need `write`; operations that reach every tenant (a model, tokenizer or layout
revision, reading every tenant at once) need `admin`. Public modules are readable by everyone.
An end user's caller also names its workspace and user inside its one tenant: what workspace- and
user-scoped modules are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cag.errors import InvalidFieldError, PermissionDeniedError
from cag.identifiers import check_name

ALL_TENANTS = "*"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    # Mark a module QUARANTINED (a copy failed verification where it is served): the cache pool's, without write.
    QUARANTINE = "quarantine"


@dataclass(frozen=True, kw_only=True)
class Caller:
    subject: str  # the service or person, e.g. "service:router", "user:ops-alice"
    scopes: frozenset[Scope]
    tenants: frozenset[str]  # tenant ids, or {ALL_TENANTS}
    # An end user's identity inside its one tenant (`sole_tenant`); None for services and operators.
    workspace: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        """Refuses a malformed workspace or user, and either one without exactly one named tenant: "workspace
        w" means nothing across tenants (InvalidFieldError)."""
        for field, value in (("workspace", self.workspace), ("user", self.user)):
            if value is None:
                continue
            check_name(field, value)
            if self.sole_tenant is None:
                raise InvalidFieldError(field, "needs exactly one tenant (not several, nor every one)")

    @property
    def sole_tenant(self) -> str | None:
        """The one tenant this caller acts on, or None when it names several or every one."""
        if len(self.tenants) != 1 or ALL_TENANTS in self.tenants:
            return None
        return next(iter(self.tenants))

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def may(self, scope: Scope, tenant_id: str) -> bool:
        """Admin implies every scope on every tenant; write implies read."""
        if self.is_admin:
            return True
        granted = scope in self.scopes or (scope is Scope.READ and Scope.WRITE in self.scopes)
        return granted and (ALL_TENANTS in self.tenants or tenant_id in self.tenants)

    def require(self, scope: Scope, tenant_id: str) -> None:
        if not self.may(scope, tenant_id):
            raise PermissionDeniedError(f"{self.subject} may not {scope.value} tenant {tenant_id!r}")

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            raise PermissionDeniedError(f"{self.subject} may not {what}: it needs the admin scope")

    def readable_tenants(self) -> frozenset[str] | None:
        """The tenants this caller may read, or None for every tenant."""
        if self.is_admin or ALL_TENANTS in self.tenants:
            return None
        return self.tenants if self.scopes & {Scope.READ, Scope.WRITE} else frozenset()


# For in-process callers that are not behind an RPC (jobs of the service itself, tests of the core).
SYSTEM = Caller(subject="system", scopes=frozenset({Scope.ADMIN}), tenants=frozenset({ALL_TENANTS}))
