"""The index query's reader condition: which ACL rows each kind of caller may retrieve."""

from __future__ import annotations

import pytest

from cag.fallback.core.audience import Reader, readable_by


def _evaluate(sql: str, params: dict[str, str], row: dict[str, str]) -> bool:
    """The condition evaluated on one row by substituting columns and parameters (the SQL uses only =, AND, OR)."""
    expression = sql
    for name in sorted(params, key=len, reverse=True):
        expression = expression.replace(f":{name}", repr(params[name]))
    for column, value in row.items():
        expression = expression.replace(column, repr(value))
    return bool(eval(expression.replace(" = ", " == ").replace("AND", "and").replace("OR", "or")))


def row(tenant: str, scope: str, principal: str = "") -> dict[str, str]:
    return {"tenant_id": tenant, "acl_scope": scope, "acl_principal": principal}


ROWS = {
    "public": row("public", "public"),
    "acme": row("acme", "tenant"),
    "globex": row("globex", "tenant"),
    "acme-ws-sales": row("acme", "workspace", "sales"),
    "acme-ws-ops": row("acme", "workspace", "ops"),
    "acme-user-ann": row("acme", "user", "ann"),
    "globex-ws-sales": row("globex", "workspace", "sales"),
}


@pytest.mark.parametrize(
    ("reader", "visible"),
    [
        (Reader(tenant_id="acme"), {"public", "acme"}),
        (Reader(tenant_id="globex"), {"public", "globex"}),
        (Reader(tenant_id="acme", workspace="sales"), {"public", "acme", "acme-ws-sales"}),
        (Reader(tenant_id="acme", user="ann"), {"public", "acme", "acme-user-ann"}),
        (Reader(tenant_id="acme", workspace="ops", user="ann"), {"public", "acme", "acme-ws-ops", "acme-user-ann"}),
        (Reader(tenant_id="initech"), {"public"}),
    ],
)
def test_each_reader_sees_public_its_tenant_and_its_own_workspace_or_user(reader: Reader, visible: set[str]) -> None:
    condition = readable_by(reader)
    assert {name for name, r in ROWS.items() if _evaluate(condition.sql, condition.params, r)} == visible


def test_values_are_bound_parameters_never_spliced_into_the_sql() -> None:
    condition = readable_by(Reader(tenant_id="acme' OR '1'='1", workspace="w", user="u"))
    assert "acme" not in condition.sql and "'" not in condition.sql
    assert condition.params["reader_tenant"] == "acme' OR '1'='1"
