"""Embedded infrastructure against real servers: Postgres with pgvector, NATS JetStream, `cag infra`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nats
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import NoServersError
from nats.js.api import StreamConfig

from cag.infra.processes import pid_alive
from cag.infra.stack import InfraStack
from tests.infra_fixtures import FreshDatabase, Infra, reachable_tmp_dir

REPO = Path(__file__).resolve().parents[2]


def _libpq(sync_url: str) -> str:
    return sync_url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_postgres_answers_and_has_pgvector(infra: Infra) -> None:
    with psycopg.connect(_libpq(infra.sync_database_url)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select '[1,2]'::vector::text").fetchone() == ("[1,2]",)
    assert infra.database_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
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


def _cag(*args: str, cag_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAG_HOME": str(cag_home)}
    env.pop("CAG_DATABASE_URL", None)
    env.pop("CAG_NATS_URL", None)
    return subprocess.run([sys.executable, "-m", "cag.cli.main", "infra", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)  # fmt: skip


def test_cli_up_status_down_leaves_no_process() -> None:
    home = reachable_tmp_dir("cag-cli-")
    run_dir = home / "run"
    try:
        up = _cag("up", "--run-dir", str(run_dir), "--fast", cag_home=home)
        assert up.returncode == 0, up.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert exports["CAG_DATABASE_URL"].startswith("postgresql+asyncpg://postgres@127.0.0.1:")
        assert exports["CAG_NATS_URL"].startswith("nats://127.0.0.1:")
        state = json.loads((run_dir / "state.json").read_text())
        pids = [state["nats"]["pid"], state["postgres"]["pid"]]
        assert all(pid_alive(pid) for pid in pids)

        again = _cag("up", "--run-dir", str(run_dir), cag_home=home)
        assert again.returncode == 0 and "already running" in again.stderr
        assert again.stdout == up.stdout

        status = _cag("status", "--run-dir", str(run_dir), cag_home=home)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" up ") == 2

        down = _cag("down", "--run-dir", str(run_dir), cag_home=home)
        assert down.returncode == 0, down.stderr
        assert not any(pid_alive(pid) for pid in pids)
        assert (run_dir / "postgres" / "data" / "PG_VERSION").is_file()  # data kept without --purge

        assert not any(server.up for server in InfraStack(run_dir).status())
    finally:
        _cag("down", "--run-dir", str(run_dir), "--purge", cag_home=home)
        shutil.rmtree(home, ignore_errors=True)
    assert not run_dir.exists()
