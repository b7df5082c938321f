"""Real Postgres (pgvector) and NATS (JetStream) for integration tests.

`infra` (session): embedded servers on free loopback ports in a temporary directory, torn down at the
end of the session with a check that no server process is left. Both require credentials:
`database_url` carries the Postgres password, `nats_url` is the NATS admin identity (every
permission) and `nats_url_for(identity)` the URL of one platform identity with its own permissions
(`cag.infra.nats_auth`). `auth_key_file` is a service-token signing key made for the session.

When `CAG_DATABASE_URL` and/or `CAG_NATS_URL` are set, those servers are used instead and never
stopped; `stop_nats()`/`start_nats()` then raise `NotImplementedError` (an outage cannot be simulated on
a server the tests do not own), and `nats_url_for` gives that one URL for every identity
(`nats_permissions_enforced` is False: the tests cannot know that server's permissions).

`fresh_database` (function): a uniquely named empty database with the `vector` extension, dropped after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cag.infra.database import DatabaseUrls, create_database, drop_database
from cag.infra.nats import NatsConfig, NatsServer
from cag.infra.nats_auth import IDENTITIES
from cag.infra.ports import free_ports
from cag.infra.postgres import PostgresConfig, PostgresServer
from cag.infra.processes import children_of, pid_alive
from cag.infra.secret_files import ensure_auth_key

__all__ = ["FreshDatabase", "Infra", "fresh_database", "infra", "reachable_tmp_dir"]


def reachable_tmp_dir(prefix: str) -> Path:
    """A temporary directory the `postgres` system user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class Infra:
    """URLs of the servers under test, and an outage switch for NATS when the tests own it."""

    database_url: str
    sync_database_url: str
    nats_url: str
    auth_key_file: Path
    nats: NatsServer | None = None
    postgres: PostgresServer | None = None

    @property
    def database(self) -> DatabaseUrls:
        return DatabaseUrls(async_url=self.database_url, sync_url=self.sync_database_url)

    @property
    def nats_permissions_enforced(self) -> bool:
        """Whether `nats_url_for` gives per-identity permissions (only on the server the tests start)."""
        return self.nats is not None

    def nats_url_for(self, identity: str) -> str:
        """The URL of a platform identity (registry, router, cachepool, compiler, fallback, ops, admin)."""
        if identity not in IDENTITIES:
            raise ValueError(f"unknown NATS identity {identity!r}: expected one of {', '.join(IDENTITIES)}")
        return self.nats.url_for(identity) if self.nats is not None else self.nats_url

    def stop_nats(self) -> None:
        """Stop the embedded NATS server (port and JetStream store are kept for `start_nats`)."""
        self._own_nats().stop()

    def start_nats(self) -> None:
        """Start the embedded NATS server again on the same port and store; returns once JetStream is healthy."""
        self._own_nats().start()

    def _own_nats(self) -> NatsServer:
        if self.nats is None:
            raise NotImplementedError("NATS comes from CAG_NATS_URL: the tests cannot stop or start it")
        return self.nats


def _server_pids(infra: Infra) -> list[int]:
    pids = []
    if infra.nats is not None and infra.nats.pid is not None:
        pids.append(infra.nats.pid)
    if infra.postgres is not None and infra.postgres.pid is not None:
        postmaster = infra.postgres.pid
        pids += [postmaster, *children_of(postmaster)]
    return pids


def _start_nats(run_dir: Path) -> NatsServer:
    port, monitor_port = free_ports(2)
    server = NatsServer(NatsConfig(port=port, monitor_port=monitor_port, base_dir=run_dir / "nats"))
    server.start()
    return server


def _start_postgres(run_dir: Path) -> PostgresServer:
    [port] = free_ports(1)
    server = PostgresServer(PostgresConfig(port=port, base_dir=run_dir / "postgres", fast=True))
    server.start()
    return server


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    run_dir = reachable_tmp_dir("cag-infra-")
    nats: NatsServer | None = None
    postgres: PostgresServer | None = None
    try:
        if "CAG_NATS_URL" not in os.environ:
            nats = _start_nats(run_dir)
        if "CAG_DATABASE_URL" not in os.environ:
            postgres = _start_postgres(run_dir)
        db = postgres.urls if postgres is not None else DatabaseUrls.parse(os.environ["CAG_DATABASE_URL"])
        handle = Infra(
            database_url=db.async_url,
            sync_database_url=db.sync_url,
            nats_url=nats.url if nats is not None else os.environ["CAG_NATS_URL"],
            auth_key_file=ensure_auth_key(run_dir / "auth.key"),
            nats=nats,
            postgres=postgres,
        )
        started = _server_pids(handle)
        yield handle
        started += _server_pids(handle)  # NATS gets a new pid when a test restarts it
    finally:
        if nats is not None:
            nats.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    left = sorted({pid for pid in started if pid_alive(pid)})
    assert not left, f"server processes left running after the session: {left}"


@dataclass(frozen=True)
class FreshDatabase:
    name: str
    database_url: str
    sync_database_url: str


@pytest.fixture
def fresh_database(infra: Infra) -> Iterator[FreshDatabase]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    urls = create_database(infra.database, name)
    try:
        yield FreshDatabase(name=name, database_url=urls.async_url, sync_database_url=urls.sync_url)
    finally:
        drop_database(infra.database, name)
