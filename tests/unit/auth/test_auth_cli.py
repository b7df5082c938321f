"""`cag auth token` and the credentials `cag` commands present (CAG_TOKEN, or minted from the local key)."""

from __future__ import annotations

import getpass
import secrets
from pathlib import Path

import jwt
import pytest

from cag.auth import ALL_TENANTS, Caller, Scope
from cag.auth.credentials import MINTED_TTL_S, resolve_token
from cag.auth.tokens import KeyFileError, issue_token, verify_token
from cag.cli.main import main
from cag.errors import UnauthenticatedError
from cag.settings import CagSettings, InfraSettings

KEY = secrets.token_bytes(32)


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 0600 signing key that the CLI finds through CAG_AUTH_KEY_FILE; no CAG_TOKEN in the way."""
    path = tmp_path / "auth.key"
    path.write_text(KEY.hex())
    path.chmod(0o600)
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(path))
    monkeypatch.delenv("CAG_TOKEN", raising=False)
    return path


def claims(token: str) -> dict[str, object]:
    return jwt.decode(token, KEY, algorithms=["HS256"], audience="cag")


def test_auth_token_prints_a_token_signed_with_the_key(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["auth", "token", "--subject", "service:router", "--scope", "read", "--scope", "write"]
    assert main([*args, "--tenant", "acme", "--tenant", "globex", "--ttl", "15m"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert verify_token(KEY, token) == Caller(
        subject="service:router", scopes=frozenset({Scope.READ, Scope.WRITE}), tenants=frozenset({"acme", "globex"})
    )
    issued = claims(token)
    assert issued["exp"] == issued["iat"] + 15 * 60  # type: ignore[operator]
    assert "service:router" in out.err and token not in out.err


def test_admin_token_defaults_to_every_tenant(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["auth", "token", "--subject", "user:ops-alice", "--scope", "admin"]) == 0
    caller = verify_token(KEY, capsys.readouterr().out.strip())
    assert caller.is_admin and caller.tenants == {ALL_TENANTS}


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--scope", "read"], "--tenant is required"),
        (["--scope", "read", "--tenant", "Acme Corp"], "tenants"),
        (["--scope", "read", "--tenant", "acme", "--ttl", "soon"], "--ttl"),
        (["--scope", "read", "--tenant", "acme", "--ttl", "0s"], "--ttl"),
        (["--scope", "read", "--tenant", "acme", "--ttl", "400d"], "--ttl"),
    ],
)
def test_auth_token_refuses_bad_input(
    key_file: Path, capsys: pytest.CaptureFixture[str], extra: list[str], problem: str
) -> None:
    assert main(["auth", "token", "--subject", "service:router", *extra]) == 2
    out = capsys.readouterr()
    assert out.out == "" and problem in out.err and len(out.err.splitlines()) == 1


def test_auth_token_refuses_a_key_other_users_can_read(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file.chmod(0o644)
    assert main(["auth", "token", "--subject", "service:router", "--scope", "admin"]) == 4
    out = capsys.readouterr()
    assert out.out == "" and f"chmod 600 {key_file}" in out.err and len(out.err.splitlines()) == 1


# Credential resolution ---------------------------------------------------------------------------------


def test_cag_token_wins_over_the_key(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = issue_token(KEY, "service:ci", ["read"], ["acme"], 60)
    monkeypatch.setenv("CAG_TOKEN", given)
    assert resolve_token(CagSettings()) == given


def test_minted_from_a_private_key_file(key_file: Path) -> None:
    token = resolve_token(CagSettings())
    caller = verify_token(KEY, token)
    assert caller.subject == f"user:{getpass.getuser()}" and caller.is_admin and caller.tenants == {ALL_TENANTS}
    issued = claims(token)
    assert issued["exp"] == issued["iat"] + MINTED_TTL_S  # type: ignore[operator]


def test_the_key_defaults_to_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAG_AUTH_KEY_FILE", raising=False)
    monkeypatch.setenv("CAG_HOME", str(tmp_path))
    assert CagSettings().auth_key_file == tmp_path / "run" / "auth.key"


def test_a_key_file_others_can_read_is_refused(key_file: Path) -> None:
    key_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        resolve_token(CagSettings())


def test_no_credentials_says_what_to_set(tmp_path: Path) -> None:
    settings = CagSettings(token=None, infra=InfraSettings(auth_key_file=tmp_path / "absent.key"))
    with pytest.raises(UnauthenticatedError, match="set CAG_TOKEN.*or CAG_AUTH_KEY_FILE"):
        resolve_token(settings)


def test_a_command_without_credentials_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CAG_TOKEN", raising=False)
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(tmp_path / "absent.key"))
    assert main(["modules", "show", "some-module", "--registry", "127.0.0.1:1"]) == 6  # UNAUTHENTICATED
    err = capsys.readouterr().err
    assert err.startswith("error (UNAUTHENTICATED): no credentials") and len(err.splitlines()) == 1


def test_settings_never_show_the_token() -> None:
    assert "secret-token" not in repr(CagSettings(token="secret-token"))
