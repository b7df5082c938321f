"""End users' tokens: workspace and user claims, the Caller fields they become, and what is refused."""

from __future__ import annotations

import secrets

import jwt
import pytest

from cag.auth import ALL_TENANTS, Caller, Scope
from cag.auth.tokens import issue_token, issue_user_token, verify_token
from cag.errors import InvalidFieldError, InvalidInputError, UnauthenticatedError

KEY = secrets.token_bytes(32)
NOW = 1_800_000_000.0


def signed(**claims: object) -> str:
    base: dict[str, object] = {
        "sub": "user:alice", "scopes": ["read"], "tenants": ["acme"],
        "iat": int(NOW), "exp": int(NOW) + 60, "aud": "cag", "iss": "cag",
    }  # fmt: skip
    return jwt.encode(base | claims, KEY, algorithm="HS256")


def test_user_token_round_trip() -> None:
    raw = issue_user_token(KEY, "acme", 300, workspace="billing", user="alice", now=NOW)
    assert verify_token(KEY, raw, now=NOW) == Caller(
        subject="user:alice",
        scopes=frozenset({Scope.READ}),
        tenants=frozenset({"acme"}),
        workspace="billing",
        user="alice",
    )
    claims = jwt.decode(raw, KEY, algorithms=["HS256"], audience="cag", options={"verify_iat": False})
    assert claims["workspace"] == "billing" and claims["user"] == "alice" and claims["tenants"] == ["acme"]


@pytest.mark.parametrize(
    ("workspace", "user", "subject"),
    [(None, None, "tenant:acme"), ("billing", None, "workspace:billing"), (None, "bob", "user:bob")],
)
def test_default_subjects(workspace: str | None, user: str | None, subject: str) -> None:
    caller = verify_token(KEY, issue_user_token(KEY, "acme", 60, workspace=workspace, user=user, now=NOW), now=NOW)
    assert (caller.subject, caller.workspace, caller.user, caller.sole_tenant) == (subject, workspace, user, "acme")


def test_given_subject_wins() -> None:
    raw = issue_user_token(KEY, "acme", 60, user="alice", subject="user:alice@idp", now=NOW)
    assert verify_token(KEY, raw, now=NOW).subject == "user:alice@idp"


def test_service_tokens_carry_no_identity_claims() -> None:
    raw = issue_token(KEY, "service:router", ["read"], ["acme", "globex"], 60, now=NOW)
    claims = jwt.decode(raw, KEY, algorithms=["HS256"], audience="cag", options={"verify_iat": False})
    assert "workspace" not in claims and "user" not in claims
    caller = verify_token(KEY, raw, now=NOW)
    assert caller.workspace is None and caller.user is None and caller.sole_tenant is None


@pytest.mark.parametrize(
    ("tenant", "workspace", "user", "field"),
    [
        ("acme", "Billing Team", None, "workspace"),
        ("acme", None, "../root", "user"),
        ("acme", "", None, "workspace"),
        (ALL_TENANTS, None, "alice", "tenant"),
        ("Acme", None, None, "tenants"),
    ],
)
def test_issue_refuses_malformed_identities(tenant: str, workspace: str | None, user: str | None, field: str) -> None:
    with pytest.raises(InvalidFieldError) as failure:
        issue_user_token(KEY, tenant, 60, workspace=workspace, user=user)
    assert failure.value.field == field


def test_identity_needs_exactly_one_tenant() -> None:
    with pytest.raises(InvalidInputError, match="exactly one tenant"):
        issue_token(KEY, "user:alice", ["read"], ["acme", "globex"], 60, user="alice")
    with pytest.raises(InvalidInputError, match="exactly one tenant"):
        Caller(subject="user:x", scopes=frozenset({Scope.READ}), tenants=frozenset({ALL_TENANTS}), workspace="w")


@pytest.mark.parametrize(
    "claims",
    [
        {"user": "Alice Smith"},
        {"workspace": ["billing"]},
        {"user": 7},
        {"user": "alice", "tenants": ["acme", "globex"]},
        {"workspace": "billing", "tenants": ["*"]},
    ],
)
def test_verify_refuses_malformed_identities(claims: dict[str, object]) -> None:
    with pytest.raises(UnauthenticatedError, match="malformed"):
        verify_token(KEY, signed(**claims), now=NOW)
