"""`cag token issue`: end users' tokens from the platform's key."""

from __future__ import annotations

import secrets
from pathlib import Path

import jwt
import pytest

from cag.auth import Caller, Scope
from cag.auth.tokens import verify_token
from cag.cli.main import EXIT_CODES, main
from cag.errors import Status

KEY = secrets.token_bytes(32)


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "auth.key"
    path.write_text(KEY.hex())
    path.chmod(0o600)
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(path))
    return path


def test_issue_prints_a_user_token(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "issue", "--tenant", "acme", "--workspace", "billing", "--user", "alice", "--ttl", "30m"]
    assert main(argv) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert verify_token(KEY, token) == Caller(
        subject="user:alice",
        scopes=frozenset({Scope.READ}),
        tenants=frozenset({"acme"}),
        workspace="billing",
        user="alice",
    )
    claims = jwt.decode(token, KEY, algorithms=["HS256"], audience="cag")
    assert claims["exp"] - claims["iat"] == 30 * 60
    assert "tenant acme as workspace billing, user alice" in out.err and token not in out.err


def test_issue_for_a_tenant_alone(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "issue", "--tenant", "acme"]) == 0
    caller = verify_token(KEY, capsys.readouterr().out.strip())
    assert (caller.subject, caller.sole_tenant, caller.workspace, caller.user) == ("tenant:acme", "acme", None, None)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--tenant", "*"], "must name one tenant"),
        (["--tenant", "acme", "--user", "Alice Smith"], "user 'Alice Smith' is malformed"),
        (["--tenant", "acme", "--workspace", "a/b"], "workspace 'a/b' is malformed"),
        (["--tenant", "acme", "--ttl", "forever"], "--ttl"),
    ],
)
def test_issue_refuses_bad_input(
    key_file: Path, capsys: pytest.CaptureFixture[str], extra: list[str], problem: str
) -> None:
    assert main(["token", "issue", *extra]) == EXIT_CODES[Status.INVALID_ARGUMENT]
    out = capsys.readouterr()
    assert problem in out.err and out.out == ""


def test_issue_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(tmp_path / "missing.key"))
    assert main(["token", "issue", "--tenant", "acme"]) != 0
    assert "does not exist" in capsys.readouterr().err
