"""Embedded infrastructure against real servers: Postgres with pgvector, NATS JetStream, `cag infra`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import nats
import psycopg
import pytest
from grpc_health.v1 import health_pb2
from nats.aio.client import Client as NatsClient
from nats.errors import NoServersError
from nats.js.api import StreamConfig

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token
from cag.infra.ports import free_port
from cag.infra.processes import pid_alive
from cag.infra.stack import InfraStack
from cag.v1 import registry_pb2, registry_pb2_grpc
from tests.infra_fixtures import FreshDatabase, Infra, reachable_tmp_dir
from tests.registry_population import make_metadata
from tests.registry_server import message_of, wait_until_serving

REPO = Path(__file__).resolve().parents[3]
SERVE_TIMEOUT_S = 60.0
SERVING = health_pb2.HealthCheckResponse.SERVING


def _libpq(sync_url: str) -> str:
    return sync_url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_postgres_answers_and_has_pgvector(infra: Infra) -> None:
    with psycopg.connect(_libpq(infra.sync_database_url)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select '[1,2]'::vector::text").fetchone() == ("[1,2]",)
    assert infra.database_url.startswith("postgresql+asyncpg://postgres:")  # the password is in the URL
    assert infra.database_url.endswith("/cag")


async def test_async_url_works_with_sqlalchemy(infra: Infra) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(infra.database_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("select '[1,2]'::vector <-> '[1,3]'::vector"))).scalar() == 1.0
    finally:
        await engine.dispose()


def test_fresh_database_is_empty_with_vector_and_is_dropped(infra: Infra, fresh_database: FreshDatabase) -> None:
    with psycopg.connect(_libpq(fresh_database.sync_database_url)) as conn:
        assert conn.execute("select current_database()").fetchone() == (fresh_database.name,)
        assert conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone() == (0,)
        assert conn.execute("select extname from pg_extension where extname = 'vector'").fetchone() == ("vector",)
    assert fresh_database.database_url.startswith("postgresql+asyncpg://")


async def test_jetstream_publish_and_pull_fetch(infra: Infra) -> None:
    nc = await nats.connect(infra.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="INFRA_SMOKE", subjects=["infra.smoke.>"]))
        ack = await js.publish("infra.smoke.a", b"hello", headers={"Nats-Msg-Id": "smoke-1"})
        assert ack.stream == "INFRA_SMOKE"
        sub = await js.pull_subscribe("infra.smoke.>", durable="smoke", stream="INFRA_SMOKE")
        [msg] = await sub.fetch(1, timeout=2)
        assert msg.data == b"hello"
        await msg.ack()
    finally:
        await nc.close()


async def _ignore(_: Exception) -> None:
    pass


async def _connect_once(url: str) -> NatsClient:
    """Connect without retrying for long (nats-py's max_reconnect_attempts=0 means retry forever)."""
    return await nats.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=1,
                              reconnect_time_wait=0.1, error_cb=_ignore)  # fmt: skip


async def test_nats_outage_and_restart_keep_jetstream_data(infra: Infra) -> None:
    if infra.nats is None:
        pytest.skip("NATS comes from CAG_NATS_URL: an outage cannot be simulated")
    nc = await nats.connect(infra.nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="INFRA_OUTAGE", subjects=["infra.outage"]))
    await js.publish("infra.outage", b"before the outage")
    await nc.close()

    infra.stop_nats()
    with pytest.raises(NoServersError):
        await _connect_once(infra.nats_url)

    infra.start_nats()
    nc = await _connect_once(infra.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("infra.outage", durable="outage", stream="INFRA_OUTAGE")
        [msg] = await sub.fetch(1, timeout=2)
        assert msg.data == b"before the outage"
    finally:
        await nc.close()


CREDENTIAL_VARS = ("CAG_DATABASE_URL", "CAG_NATS_URL", "CAG_REGISTRY_DATABASE_URL", "CAG_REGISTRY_NATS_URL",
                   "CAG_AUTH_KEY_FILE", "CAG_REGISTRY_AUTH_KEY_FILE", "CAG_TOKEN")  # fmt: skip


def _env(cag_home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in CREDENTIAL_VARS}
    return {**env, "CAG_HOME": str(cag_home), **extra}


def _cag(*args: str, cag_home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cag.cli.main", "infra", *args], capture_output=True, text=True,
                          env=_env(cag_home), cwd=REPO, timeout=120, check=False)  # fmt: skip


def _exports(up_stdout: str, cag_home: Path) -> dict[str, str]:
    """What `eval "$(cag infra up)"` exports, as a shell sees it."""
    script = f'{up_stdout}\nprintf "%s\\n" "$CAG_DATABASE_URL" "$CAG_NATS_URL"'
    shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=_env(cag_home), check=True)
    database_url, nats_url = shell.stdout.splitlines()
    return {"CAG_DATABASE_URL": database_url, "CAG_NATS_URL": nats_url}


def _secrets(run_dir: Path) -> list[str]:
    state = json.loads((run_dir / "state.json").read_text())
    passwords = json.loads((run_dir / "nats" / "credentials.json").read_text())
    return [(run_dir / "postgres" / "password").read_text().strip(), *passwords.values(),
            (run_dir / "auth.key").read_text().strip(), state["postgres"]["database_url"]]  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_up_status_down_leaves_no_process() -> None:
    home = reachable_tmp_dir("cag-cli-")
    run_dir = home / "run"
    try:
        up = _cag("up", "--run-dir", str(run_dir), "--fast", cag_home=home)
        assert up.returncode == 0, up.stderr
        exports = _exports(up.stdout, home)
        password = (run_dir / "postgres" / "password").read_text().strip()
        assert exports["CAG_DATABASE_URL"].startswith(f"postgresql+asyncpg://postgres:{password}@127.0.0.1:")
        assert exports["CAG_NATS_URL"].startswith("nats://admin:")
        state = json.loads((run_dir / "state.json").read_text())
        assert exports["CAG_NATS_URL"] == state["nats"]["urls"]["admin"]
        assert set(state["nats"]["urls"]) == {"registry", "router", "cachepool", "compiler", "fallback", "ops",
                                              "monitor", "admin"}  # fmt: skip
        pids = [state["nats"]["pid"], state["postgres"]["pid"]]
        assert all(pid_alive(pid) for pid in pids)
        for secret_file in ("state.json", "admin.env", "auth.key", "nats/credentials.json", "nats/nats-server.conf",
                            "postgres/password"):  # fmt: skip
            assert _mode(run_dir / secret_file) == 0o600, secret_file
        assert _mode(run_dir / "postgres" / "sock") & 0o002 == 0  # the socket directory is not world-writable
        key = (run_dir / "auth.key").read_text()
        assert len(bytes.fromhex(key.strip())) == 32
        assert state["auth_key_file"] == str(run_dir / "auth.key")

        again = _cag("up", "--run-dir", str(run_dir), cag_home=home)
        assert again.returncode == 0 and "already running" in again.stderr
        assert again.stdout == up.stdout

        status = _cag("status", "--run-dir", str(run_dir), cag_home=home)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" up ") == 2
        assert "credentials in" in status.stdout and str(run_dir / "postgres" / "password") in status.stdout
        assert "credentials.json" in up.stderr and "password" in up.stderr
        for output in (up.stdout, up.stderr, again.stdout, again.stderr, status.stdout, status.stderr):
            assert not any(secret in output for secret in _secrets(run_dir))

        down = _cag("down", "--run-dir", str(run_dir), cag_home=home)
        assert down.returncode == 0, down.stderr
        assert not any(pid_alive(pid) for pid in pids)
        assert (run_dir / "postgres" / "data" / "PG_VERSION").is_file()  # data kept without --purge
        assert not any(server.up for server in InfraStack(run_dir).status())

        # Up again: the same key and credentials, so exported URLs and issued tokens stay valid.
        back = _cag("up", "--run-dir", str(run_dir), cag_home=home)
        assert back.returncode == 0, back.stderr
        assert (run_dir / "auth.key").read_text() == key
        assert _exports(back.stdout, home) == exports
    finally:
        _cag("down", "--run-dir", str(run_dir), "--purge", cag_home=home)
        shutil.rmtree(home, ignore_errors=True)
    assert not run_dir.exists()


async def _module_events(nats_url: str) -> list[str]:
    """Subjects of the `cag.module.*` events in the stream, read with the admin identity."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe("cag.module.>", durable="infra-check", stream="cag")
        return [msg.subject for msg in await sub.fetch(1, timeout=5)]
    finally:
        await nc.close()


def test_registry_serve_finds_the_servers_of_infra_up_and_runs_as_the_registry_identity() -> None:
    """No exported variables: `cag registry serve` takes the database, its own NATS identity and the token
    key from the run directory, declares the stream, consumes, and publishes module events."""
    home = reachable_tmp_dir("cag-serve-")
    run_dir = home / "run"
    address = f"127.0.0.1:{free_port()}"
    process: subprocess.Popen[bytes] | None = None
    try:
        up = _cag("up", "--fast", cag_home=home)  # the default run directory: $CAG_HOME/run
        assert up.returncode == 0, up.stderr
        process = subprocess.Popen([sys.executable, "-m", "cag.cli.main", "registry", "serve", "--address", address],
                                   env=_env(home), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        wait_until_serving(address, process, SERVE_TIMEOUT_S)
        key = bytes.fromhex((run_dir / "auth.key").read_text().strip())
        token = issue_token(key, "service:infra-test", [Scope.ADMIN], [ALL_TENANTS], 600)
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            credentials = (("authorization", f"Bearer {token}"),)
            stub.Register(registry_pb2.RegisterRequest(module=message_of(make_metadata("m-1"), "git://kb/a")),
                          metadata=credentials)  # fmt: skip
            stub.Publish(registry_pb2.PublishRequest(module_id="m-1"), metadata=credentials)
        admin_url = json.loads((run_dir / "state.json").read_text())["nats"]["urls"]["admin"]
        assert asyncio.run(_module_events(admin_url)) == ["cag.module.published"]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        log = output.decode(errors="replace")
        assert process.returncode == 0, log
        assert "Violation" not in (run_dir / "nats" / "nats-server.log").read_text()
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.communicate()
        _cag("down", "--purge", cag_home=home)
        shutil.rmtree(home, ignore_errors=True)


def test_registry_serve_without_variables_or_servers_says_what_to_set() -> None:
    home = reachable_tmp_dir("cag-serve-")
    try:
        serve = subprocess.run([sys.executable, "-m", "cag.cli.main", "registry", "serve"], capture_output=True,
                               text=True, env=_env(home), cwd=REPO, timeout=60, check=False)  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert serve.returncode == 2
    [line] = serve.stderr.splitlines()
    assert "CAG_DATABASE_URL" in line and "CAG_NATS_URL" in line and "cag infra up" in line
