"""Who may read a chunk, as one SQL condition evaluated by the index query itself (never filtered afterwards):
public chunks, the tenant's chunks, and workspace or user chunks only for that workspace or user."""

from __future__ import annotations

from dataclasses import dataclass

from cag.acl import PUBLIC_TENANT, AclScope


@dataclass(frozen=True, kw_only=True)
class Reader:
    """The caller a retrieval is for: the tenant answered for, and the end user's workspace and user in it."""

    tenant_id: str
    workspace: str | None = None
    user: str | None = None


@dataclass(frozen=True, kw_only=True)
class Condition:
    """A SQL boolean expression over the chunk table's `tenant_id`, `acl_scope`, `acl_principal` columns, with
    its bound parameters (named `:name`)."""

    sql: str
    params: dict[str, str]


def readable_by(reader: Reader) -> Condition:
    """The chunks `reader` may retrieve."""
    params = {
        "public_scope": AclScope.PUBLIC.value,
        "public_tenant": PUBLIC_TENANT,
        "reader_tenant": reader.tenant_id,
        "tenant_scope": AclScope.TENANT.value,
    }
    private = ["acl_scope = :tenant_scope"]
    if reader.workspace is not None:
        private.append("(acl_scope = :workspace_scope AND acl_principal = :reader_workspace)")
        params |= {"workspace_scope": AclScope.WORKSPACE.value, "reader_workspace": reader.workspace}
    if reader.user is not None:
        private.append("(acl_scope = :user_scope AND acl_principal = :reader_user)")
        params |= {"user_scope": AclScope.USER.value, "reader_user": reader.user}
    sql = (
        "((acl_scope = :public_scope AND tenant_id = :public_tenant) OR "
        f"(tenant_id = :reader_tenant AND ({' OR '.join(private)})))"
    )
    return Condition(sql=sql, params=params)
