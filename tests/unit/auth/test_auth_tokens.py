"""Signed service tokens (cag.auth.tokens) and the Caller permission model they produce."""

from __future__ import annotations

import secrets
from pathlib import Path

import jwt
import pytest

from cag.auth import ALL_TENANTS, Caller, Scope
from cag.auth.tokens import (
    CLOCK_SKEW_S,
    KeyFileError,
    issue_token,
    load_key,
    verify_token,
)
from cag.errors import InvalidInputError, PermissionDeniedError, UnauthenticatedError

KEY = secrets.token_bytes(32)
NOW = 1_800_000_000.0


def token(**overrides: object) -> str:
    """A token signed with KEY whose claims are the defaults updated by `overrides` (None removes one)."""
    claims: dict[str, object] = {
        "sub": "service:router", "scopes": ["read"], "tenants": ["acme"],
        "iat": int(NOW), "exp": int(NOW) + 60, "aud": "cag", "iss": "cag",
    }  # fmt: skip
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, KEY, algorithm="HS256")


def refused(raw: str, *, key: bytes = KEY, now: float = NOW) -> str:
    with pytest.raises(UnauthenticatedError) as failure:
        verify_token(key, raw, now=now)
    message = str(failure.value)
    assert not any(part and part in message for part in raw.split("."))  # never echoes the credential
    return message


def test_round_trip() -> None:
    raw = issue_token(KEY, "service:router", [Scope.WRITE, "read"], ["acme", "globex"], 300, now=NOW)
    caller = verify_token(KEY, raw, now=NOW + 299)
    assert caller == Caller(
        subject="service:router", scopes=frozenset({Scope.READ, Scope.WRITE}), tenants=frozenset({"acme", "globex"})
    )


def test_all_tenants_round_trip() -> None:
    caller = verify_token(KEY, issue_token(KEY, "user:ops", ["admin"], [ALL_TENANTS], 60, now=NOW), now=NOW)
    assert caller.is_admin and caller.tenants == {ALL_TENANTS}


def test_expired_says_when_and_what_to_do() -> None:
    raw = issue_token(KEY, "service:router", ["read"], ["acme"], 60, now=NOW)
    assert verify_token(KEY, raw, now=NOW + 60 + CLOCK_SKEW_S - 1).subject == "service:router"  # within the skew
    message = refused(raw, now=NOW + 60 + CLOCK_SKEW_S)
    assert "expired" in message and "service:router" in message and "cag auth token" in message


def test_issued_in_the_future_is_refused() -> None:
    assert "not valid before" in refused(token(iat=int(NOW) + 3600, exp=int(NOW) + 7200))


def test_tampered_payload_fails_the_signature() -> None:
    header, _, signature = token().split(".")
    forged_payload = token(scopes=["admin"], tenants=["*"]).split(".")[1]
    assert "signature does not verify" in refused(f"{header}.{forged_payload}.{signature}")


def test_another_key_fails_the_signature() -> None:
    assert "signature does not verify" in refused(token(), key=secrets.token_bytes(32))


def test_unsigned_token_is_refused() -> None:
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none")
    assert "HS256" in refused(unsigned)


def test_wrong_audience_and_issuer() -> None:
    assert "audience" in refused(token(aud="someone-else"))
    assert "issued by someone else" in refused(token(iss="someone-else"))


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "scopes", "tenants", "aud", "iss"])
def test_every_claim_is_required(claim: str) -> None:
    assert f"lacks the '{claim}' claim" in refused(token(**{claim: None}))


def test_unknown_scope() -> None:
    message = refused(token(scopes=["read", "superuser"]))
    assert "unknown scope 'superuser'" in message and "read, write, admin" in message


@pytest.mark.parametrize(
    "claims",
    [
        {"scopes": []},
        {"scopes": "read"},
        {"tenants": "acme"},
        {"tenants": ["Acme Corp"]},
        {"sub": "has spaces"},
        {"exp": "tomorrow"},
        {"exp": True},
    ],
)
def test_malformed_claims(claims: dict[str, object]) -> None:
    assert "malformed" in refused(token(**claims))


@pytest.mark.parametrize("raw", ["", "not-a-jwt", "a.b.c", "x" * 10_000])
def test_garbage_is_malformed(raw: str) -> None:
    with pytest.raises(UnauthenticatedError, match="malformed") as failure:
        verify_token(KEY, raw, now=NOW)
    assert len(str(failure.value)) < 200


@pytest.mark.parametrize(
    ("subject", "scopes", "tenants", "ttl_s"),
    [
        ("", ["read"], ["acme"], 60),
        ("service:router", [], ["acme"], 60),
        ("service:router", ["root"], ["acme"], 60),
        ("service:router", ["read"], ["../etc"], 60),
        ("service:router", ["read"], ["acme"], 0),
    ],
)
def test_issue_refuses_bad_input(subject: str, scopes: list[str], tenants: list[str], ttl_s: float) -> None:
    with pytest.raises(InvalidInputError):
        issue_token(KEY, subject, scopes, tenants, ttl_s)


def test_short_keys_are_refused() -> None:
    with pytest.raises(KeyFileError, match="at least 32"):
        issue_token(b"short", "service:router", ["read"], ["acme"], 60)


# Key files ----------------------------------------------------------------------------------------


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "auth.key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_load_key(tmp_path: Path) -> None:
    assert load_key(key_file(tmp_path, KEY.hex() + "\n")) == KEY


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, KEY.hex(), mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600") as failure:
        load_key(path)
    assert "\n" not in str(failure.value)


@pytest.mark.parametrize(
    ("text", "problem"), [(secrets.token_hex(16), "at least 32"), ("zz" * 32, "hex"), ("", "at least 32")]
)
def test_short_or_garbled_key_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(KeyFileError, match=problem):
        load_key(key_file(tmp_path, text))


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "absent.key")


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        load_key(tmp_path)


# The permission model ------------------------------------------------------------------------------


def caller(scopes: set[Scope], tenants: set[str]) -> Caller:
    return Caller(subject="service:test", scopes=frozenset(scopes), tenants=frozenset(tenants))


@pytest.mark.parametrize(
    ("scopes", "tenants", "expected"),
    [
        # (scopes, tenants) → may (read, write, admin) on tenant "acme", then the same on "globex"
        ({Scope.READ}, {"acme"}, "rw-a: y n n | n n n"),
        ({Scope.WRITE}, {"acme"}, "rw-a: y y n | n n n"),
        ({Scope.READ, Scope.WRITE}, {"acme", "globex"}, "rw-a: y y n | y y n"),
        ({Scope.READ}, {ALL_TENANTS}, "rw-a: y n n | y n n"),
        ({Scope.WRITE}, {ALL_TENANTS}, "rw-a: y y n | y y n"),
        ({Scope.ADMIN}, set(), "rw-a: y y y | y y y"),
        ({Scope.READ}, set(), "rw-a: n n n | n n n"),
    ],
)
def test_may_matrix(scopes: set[Scope], tenants: set[str], expected: str) -> None:
    c = caller(scopes, tenants)
    row = " | ".join(
        " ".join("y" if c.may(scope, tenant) else "n" for scope in (Scope.READ, Scope.WRITE, Scope.ADMIN))
        for tenant in ("acme", "globex")
    )
    assert f"rw-a: {row}" == expected


def test_require_and_readable_tenants() -> None:
    reader = caller({Scope.READ}, {"acme"})
    reader.require(Scope.READ, "acme")
    with pytest.raises(PermissionDeniedError, match="service:test may not read tenant 'globex'"):
        reader.require(Scope.READ, "globex")
    with pytest.raises(PermissionDeniedError, match="admin scope"):
        reader.require_admin("invalidate a model revision")
    assert reader.readable_tenants() == {"acme"}
    assert caller({Scope.ADMIN}, set()).readable_tenants() is None
    assert caller({Scope.READ}, {ALL_TENANTS}).readable_tenants() is None
