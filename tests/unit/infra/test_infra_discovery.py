"""Finding the embedded servers from a run directory's state, and the NATS permission table, without servers."""

from __future__ import annotations

import argparse
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cag.cli.invalidate_cmd import ops_nats_url, shown
from cag.cli.main import main
from cag.cli.registry_cmd import resolve_infra
from cag.errors import InvalidInputError
from cag.infra.nats_auth import IDENTITIES, permissions_for, render_config
from cag.infra.secret_files import ensure_auth_key, write_secret
from cag.infra.stack import InfraState, NatsState, PostgresState, local_service_urls
from cag.registry.settings import RegistrySettings
from cag.settings import CagSettings, InfraSettings

DB = "postgresql+asyncpg://postgres:pg-secret@127.0.0.1:5999/cag"


def _write_state(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    urls = {identity: f"nats://{identity}:{identity}-secret@127.0.0.1:4999" for identity in IDENTITIES}
    state = InfraState(
        fast=True,
        nats=NatsState(pid=None, port=4999, monitor_port=8999, url="nats://127.0.0.1:4999",
                       monitor_url="http://127.0.0.1:8999", store_dir="s", log_file="l", urls=urls),
        postgres=PostgresState(pid=None, port=5999, database_url=DB,
                               sync_database_url=DB.replace("asyncpg", "psycopg"), data_dir="d", log_file="l"),
    )  # fmt: skip
    (run_dir / "state.json").write_text(state.to_json())


def test_local_service_urls_give_the_identity_its_own_nats_url(tmp_path: Path) -> None:
    _write_state(tmp_path)
    urls = local_service_urls(tmp_path, "ops")
    assert urls is not None
    assert urls.nats_url == "nats://ops:ops-secret@127.0.0.1:4999"
    assert urls.database_url == DB
    assert local_service_urls(tmp_path / "nothing-here", "ops") is None


INFRA_ENV = ("CAG_DATABASE_URL", "CAG_NATS_URL", "CAG_REGISTRY_DATABASE_URL", "CAG_REGISTRY_NATS_URL")


Resolve = Callable[[Path, dict[str, str]], InfraSettings]


@pytest.fixture
def resolve_endpoints(monkeypatch: pytest.MonkeyPatch) -> Resolve:
    """`cag registry serve`'s infra with exactly `env` (of the infra variables) set."""

    def resolve(run_dir: Path, env: dict[str, str]) -> InfraSettings:
        for name in INFRA_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return resolve_infra(run_dir, RegistrySettings.infra_from_env())

    return resolve


def test_registry_serve_uses_the_recorded_servers_with_the_registry_identity(
    tmp_path: Path, resolve_endpoints: Resolve
) -> None:
    _write_state(tmp_path)
    endpoints = resolve_endpoints(tmp_path, {})
    assert endpoints.nats_url == "nats://registry:registry-secret@127.0.0.1:4999"
    assert endpoints.database_url == DB


def test_environment_wins_over_the_recorded_servers(tmp_path: Path, resolve_endpoints: Resolve) -> None:
    _write_state(tmp_path)
    env = {"CAG_NATS_URL": "nats://elsewhere:4222", "CAG_REGISTRY_DATABASE_URL": "postgresql://db/x",
           "CAG_DATABASE_URL": "postgresql://loses/y"}  # fmt: skip
    endpoints = resolve_endpoints(tmp_path, env)
    assert endpoints.nats_url == "nats://elsewhere:4222"
    assert endpoints.database_url == "postgresql://db/x"
    # Only the database from the environment: NATS still comes from the state.
    assert str(resolve_endpoints(tmp_path, {"CAG_DATABASE_URL": "postgresql://db/x"}).nats_url).startswith(
        "nats://registry:"
    )


def test_without_environment_or_state_the_error_says_what_to_set(tmp_path: Path, resolve_endpoints: Resolve) -> None:
    with pytest.raises(InvalidInputError) as raised:
        resolve_endpoints(tmp_path, {})
    message = str(raised.value)
    assert "\n" not in message
    assert "CAG_DATABASE_URL" in message and "CAG_NATS_URL" in message and "cag infra up" in message
    assert resolve_endpoints(tmp_path, {"CAG_DATABASE_URL": "a", "CAG_NATS_URL": "b"}).nats_url == "b"


def test_cag_registry_serve_without_anything_prints_one_line_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAG_HOME", str(tmp_path))
    for name in ("CAG_DATABASE_URL", "CAG_NATS_URL", "CAG_REGISTRY_DATABASE_URL", "CAG_REGISTRY_NATS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["registry", "serve"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert "CAG_DATABASE_URL" in line and "cag infra up" in line and str(tmp_path / "run") in line


def test_state_from_before_credentials_still_loads_but_has_no_nats_urls(
    tmp_path: Path, resolve_endpoints: Resolve
) -> None:
    _write_state(tmp_path)
    raw = json.loads((tmp_path / "state.json").read_text())
    del raw["nats"]["urls"], raw["nats"]["credentials_file"], raw["postgres"]["password_file"]
    raw["version"] = 1
    (tmp_path / "state.json").write_text(json.dumps(raw))
    urls = local_service_urls(tmp_path, "registry")
    assert urls is not None and urls.nats_url is None
    with pytest.raises(InvalidInputError, match="CAG_NATS_URL"):
        resolve_endpoints(tmp_path, {})


def test_secrets_are_0600_and_the_auth_key_is_made_once(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the modes must not depend on a lenient umask
    try:
        key = ensure_auth_key(tmp_path / "auth.key")
        first = key.read_text()
        ensure_auth_key(key)
        write_secret(tmp_path / "other", "x")
    finally:
        os.umask(old_umask)
    assert key.read_text() == first
    assert len(bytes.fromhex(first.strip())) == 32
    for path in (key, tmp_path / "other"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# The permission matrix, spelled out (not derived from the code under test).
PUBLISHES = {
    "registry": {"cag.module.published", "cag.module.invalidated", "cag.module.expired", "cag.routes.updated"},
    "cachepool": {"cag.module.loaded", "cag.module.evicted"},
    "compiler": {"cag.module.compiled", "cag.compile.>"},
    "router": {"cag.route.decided"},
    "fallback": {"cag.fallback.>", "cag.candidate.>"},
}


@pytest.mark.parametrize("identity", sorted(PUBLISHES))
def test_each_service_publishes_its_own_events_and_dead_letters(identity: str) -> None:
    perms = permissions_for(identity)
    events = {s for s in perms.publish if not s.startswith("$")}
    assert events == PUBLISHES[identity] | {"cag.dlq.>"}
    assert perms.subscribe == ("_INBOX.>",)
    assert "$JS.API.STREAM.DELETE.cag" not in perms.publish
    assert ("$JS.API.STREAM.UPDATE.cag" in perms.publish) == (identity == "registry")


def test_ops_only_publishes_triggers_and_admin_everything() -> None:
    assert permissions_for("ops").publish == ("cag.invalidate.>",)
    assert permissions_for("admin").publish == (">",)
    with pytest.raises(ValueError, match="unknown NATS identity"):
        permissions_for("intruder")


def test_rendered_configuration_has_one_user_per_identity() -> None:
    text = render_config({identity: f"pw-{identity}" for identity in IDENTITIES})
    for identity in IDENTITIES:
        assert f'user: "{identity}", password: "pw-{identity}"' in text


def test_cag_invalidate_publishes_as_ops_and_never_shows_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAG_NATS_URL", raising=False)
    _write_state(tmp_path / "run")
    settings = CagSettings(home=tmp_path)
    url = ops_nats_url(argparse.Namespace(nats=None), settings)
    assert url == "nats://ops:ops-secret@127.0.0.1:4999"
    assert shown(url) == "nats://ops:***@127.0.0.1:4999"
    assert ops_nats_url(argparse.Namespace(nats="nats://elsewhere:4222"), settings) == "nats://elsewhere:4222"
