"""Settings: one base with the shared infra nested in it, one class per process kind, every documented
environment variable honoured; and the engine runtime tuning applied by every process that hosts an engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cag import engine_runtime
from cag.errors import InvalidInputError
from cag.registry.settings import RegistrySettings
from cag.settings import DEFAULT_NATS_URL, CagBaseSettings, CagSettings, InfraSettings

INFRA_VARS = ("DATABASE_URL", "NATS_URL", "AUTH_KEY_FILE")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any of the variables these tests set."""
    for name in list(os.environ):
        if name.startswith(("CAG_REGISTRY_", "CAG_TOKEN")) or name in {f"CAG_{v}" for v in INFRA_VARS}:
            monkeypatch.delenv(name)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return monkeypatch


def test_every_settings_class_shares_one_base() -> None:
    assert issubclass(CagSettings, CagBaseSettings) and issubclass(RegistrySettings, CagBaseSettings)
    assert CagSettings.model_fields["infra"].annotation is InfraSettings
    assert RegistrySettings.model_fields["infra"].annotation is InfraSettings


def test_cli_settings_read_the_cag_variables(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("CAG_HOME", str(tmp_path))
    env.setenv("CAG_NUM_THREADS", "3")
    env.setenv("CAG_TOKEN", "t0ken")
    env.setenv("CAG_REGISTRY_ADDRESS", "10.0.0.1:5")
    env.setenv("CAG_NATS_URL", "nats://nats:4222")
    env.setenv("CAG_AUTH_KEY_FILE", str(tmp_path / "k"))
    env.setenv("SOURCE_DATE_EPOCH", "1700000000")
    s = CagSettings()
    assert (s.home, s.num_threads, s.token, s.registry_address) == (tmp_path, 3, "t0ken", "10.0.0.1:5")
    assert (s.nats_url, s.auth_key_file, s.source_date_epoch) == ("nats://nats:4222", tmp_path / "k", 1_700_000_000)
    assert s.infra_given == {"nats_url", "auth_key_file"}


def test_cli_defaults_and_what_they_need(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("CAG_HOME", str(tmp_path))
    s = CagSettings()
    assert (s.nats_url, s.auth_key_file, s.infra_given) == (DEFAULT_NATS_URL, tmp_path / "run" / "auth.key", set())
    assert s.source_date_epoch is None
    with pytest.raises(InvalidInputError, match="set CAG_DATABASE_URL or CAG_DATABASE_URL"):
        _ = s.database_url


def test_registry_reads_the_shared_variables_and_its_own_override_them(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("CAG_DATABASE_URL", "postgresql+psycopg://shared/db")
    env.setenv("CAG_NATS_URL", "nats://shared:4222")
    env.setenv("CAG_AUTH_KEY_FILE", str(tmp_path / "shared.key"))
    shared = RegistrySettings()
    assert (shared.database_url, shared.nats_url, shared.auth_key_file) == (
        "postgresql+psycopg://shared/db",
        "nats://shared:4222",
        tmp_path / "shared.key",
    )
    env.setenv("CAG_REGISTRY_DATABASE_URL", "postgresql+psycopg://own/db")
    env.setenv("CAG_REGISTRY_AUTH_KEY_FILE", str(tmp_path / "own.key"))
    env.setenv("CAG_REGISTRY_ADDRESS", "0.0.0.0:6000")
    env.setenv("CAG_REGISTRY_POOL_SIZE", "3")
    own = RegistrySettings()
    assert (own.database_url, own.nats_url, own.auth_key_file) == (
        "postgresql+psycopg://own/db",
        "nats://shared:4222",
        tmp_path / "own.key",
    )
    assert (own.address, own.pool_size) == ("0.0.0.0:6000", 3)
    # What the caller passes wins over the environment.
    given = RegistrySettings(infra=InfraSettings(database_url="d", nats_url="n", auth_key_file=tmp_path / "g"))
    assert (given.database_url, given.nats_url, given.auth_key_file) == ("d", "n", tmp_path / "g")


def test_registry_refuses_to_start_without_its_infra_saying_what_to_set(env: pytest.MonkeyPatch) -> None:
    env.setenv("CAG_NATS_URL", "nats://shared:4222")
    with pytest.raises(ValidationError, match="set CAG_REGISTRY_DATABASE_URL or CAG_DATABASE_URL, CAG_REGISTRY_AUTH"):
        RegistrySettings()
    # An entry point may read what the environment gives, then fill the gaps before building the settings.
    assert RegistrySettings.infra_from_env() == InfraSettings(nats_url="nats://shared:4222")


def test_unknown_settings_are_refused(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        CagSettings(nats_url="nats://flat:4222")  # type: ignore[call-arg]  # infra is nested: infra=InfraSettings(...)


def test_the_cli_says_which_setting_is_invalid_in_one_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cag.cli.main import main

    env.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main(["infra", "status"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error (INVALID_ARGUMENT): invalid settings in the environment: SOURCE_DATE_EPOCH")


# --- engine runtime tuning ---

HOST = """
import json, os, sys
from cag.cli.main import main
code = main(sys.argv[1:])
import torch
from cag import engine_runtime
print(json.dumps({"code": code, "threads": torch.get_num_threads(), "spin": os.environ.get("GOMP_SPINCOUNT"),
                  "before_torch": engine_runtime.applied.before_torch}), file=sys.stderr)
"""


def host_engine(chain: tuple[Path, Path], **env: str) -> dict[str, object]:
    """`cag query` over a module chain in a fresh process (it loads the engine); what tuning it got."""
    environ = {k: v for k, v in os.environ.items() if k not in {"GOMP_SPINCOUNT", "OMP_NUM_THREADS"}} | env
    argv = ["query", "--module", str(chain[0]), "--module", str(chain[1]), "--query", "Hi?", "--max-new-tokens", "1"]
    done = subprocess.run(
        [sys.executable, "-c", HOST, *argv, "--no-registry"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, done.stderr
    return report


def test_a_process_hosting_an_engine_is_tuned_before_torch_loads(tiny_chain: tuple[Path, Path]) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one thread is torch's default on one core: nothing to tell apart")
    assert host_engine(tiny_chain, CAG_NUM_THREADS="1") == {
        "code": 0, "threads": 1, "spin": engine_runtime.GOMP_SPINCOUNT, "before_torch": True,
    }  # fmt: skip
    # The user's own OpenMP setting wins.
    assert host_engine(tiny_chain, CAG_NUM_THREADS="2", GOMP_SPINCOUNT="5")["spin"] == "5"


def test_the_test_session_itself_is_tuned() -> None:
    applied = engine_runtime.applied
    assert applied is not None and applied.before_torch and applied.num_threads == 1
    assert os.environ["GOMP_SPINCOUNT"]
