"""Who is calling, and what it may do: service identities with tenant-scoped permissions (torch-free)."""

from cag.auth.caller import ALL_TENANTS, Caller, Scope

__all__ = ["ALL_TENANTS", "Caller", "Scope"]
