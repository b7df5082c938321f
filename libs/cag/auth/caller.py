"""The authenticated caller of an RPC and the permission checks every service core applies.

A caller holds scopes (what kind of operation) and tenants (on whose data). Reading a tenant's
modules needs `read` on that tenant; registering, publishing, rolling back and tenant-scoped
invalidations need `write`; operations that reach every tenant (a model, tokenizer or layout
revision, reading every tenant at once) need `admin`. Public modules are readable by everyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cag.errors import PermissionDeniedError

ALL_TENANTS = "*"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True, kw_only=True)
class Caller:
    subject: str  # the service or person, e.g. "service:router", "user:ops-alice"
    scopes: frozenset[Scope]
    tenants: frozenset[str]  # tenant ids, or {ALL_TENANTS}

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
