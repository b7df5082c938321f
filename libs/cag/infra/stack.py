"""NATS and Postgres brought up together under one run directory, findable from another process.

Layout of a run directory::

    state.json      ports, pids, URLs and directories of the last `up`
    nats/           JetStream store and nats-server.log
    postgres/       data/, sock/, postgres.log, pg_ctl.log
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cag.infra.nats import NatsConfig, NatsServer
from cag.infra.ports import free_ports, is_port_free
from cag.infra.postgres import PostgresConfig, PostgresServer

STATE_FILE = "state.json"
STATE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class NatsState:
    pid: int | None
    port: int
    monitor_port: int
    url: str
    monitor_url: str
    store_dir: str
    log_file: str


@dataclass(frozen=True, kw_only=True)
class PostgresState:
    pid: int | None
    port: int
    database_url: str
    sync_database_url: str
    data_dir: str
    log_file: str


@dataclass(frozen=True, kw_only=True)
class InfraState:
    """What `state.json` records: enough for `down`/`status` in another process."""

    fast: bool
    nats: NatsState
    postgres: PostgresState

    @property
    def database_url(self) -> str:
        return self.postgres.database_url

    @property
    def sync_database_url(self) -> str:
        return self.postgres.sync_database_url

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> InfraState:
        raw: dict[str, Any] = json.loads(text)
        return cls(fast=bool(raw["fast"]), nats=NatsState(**raw["nats"]), postgres=PostgresState(**raw["postgres"]))


@dataclass(frozen=True, kw_only=True)
class ServerStatus:
    name: str
    up: bool
    url: str | None
    pid: int | None
    detail: str = ""


class InfraStack:
    """Both servers under `run_dir`. `up` is idempotent and keeps the previous ports when it can, so
    exported URLs stay valid across `down`/`up`; `down` keeps the data unless asked to purge it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir.absolute()

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def nats_dir(self) -> Path:
        return self.run_dir / "nats"

    @property
    def postgres_dir(self) -> Path:
        return self.run_dir / "postgres"

    def load_state(self) -> InfraState | None:
        try:
            return InfraState.from_json(self.state_file.read_text())
        except FileNotFoundError:
            return None

    def is_up(self) -> bool:
        return all(s.up for s in self.status())

    def up(self, *, fast: bool = False, timeout_s: float = 30.0) -> InfraState:
        """Start whichever server is not running, wait until both are healthy, record and return the state."""
        previous = self.load_state()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        nats = self._nats_server(previous, allow_new_ports=True)
        nats_was_running = nats.pid is not None
        nats.start(timeout_s)
        postgres = self._postgres_server(previous, fast=fast, allow_new_ports=True)
        try:
            postgres.start(timeout_s)
        except BaseException:
            if not nats_was_running:
                nats.stop()
            raise
        state = _state(nats, postgres, fast=fast)
        self._write_state(state)
        return state

    def down(self, *, purge: bool = False, timeout_s: float = 30.0) -> bool:
        """Stop both servers (False when this run directory has no state); `purge` also deletes their data."""
        previous = self.load_state()
        if previous is not None:
            self._nats_server(previous).stop(timeout_s)
            self._postgres_server(previous, fast=previous.fast).stop(timeout_s)
        if purge:
            self._purge()
        return previous is not None

    def status(self) -> list[ServerStatus]:
        previous = self.load_state()
        if previous is None:
            return [ServerStatus(name="nats", up=False, url=None, pid=None),
                    ServerStatus(name="postgres", up=False, url=None, pid=None)]  # fmt: skip
        nats = self._nats_server(previous)
        postgres = self._postgres_server(previous, fast=previous.fast)
        return [
            ServerStatus(name="nats", up=nats.pid is not None and nats.is_healthy(), url=nats.url, pid=nats.pid,
                         detail=f"monitor {nats.config.monitor_url}"),
            ServerStatus(name="postgres", up=postgres.is_ready(), url=postgres.urls.async_url, pid=postgres.pid,
                         detail=f"data {postgres.config.data_dir}"),
        ]  # fmt: skip

    def _nats_server(self, previous: InfraState | None, *, allow_new_ports: bool = False) -> NatsServer:
        """The recorded server, or one on fresh ports when there is no record or (`allow_new_ports`) when the
        recorded server is not running and its ports are taken by something else."""
        if previous is not None:
            recorded = previous.nats
            config = NatsConfig(port=recorded.port, monitor_port=recorded.monitor_port, base_dir=self.nats_dir)
            server = NatsServer(config, pid=recorded.pid)
            if not allow_new_ports or server.pid is not None or _ports_free(config.port, config.monitor_port):
                return server
        port, monitor_port = free_ports(2)
        return NatsServer(NatsConfig(port=port, monitor_port=monitor_port, base_dir=self.nats_dir))

    def _postgres_server(
        self, previous: InfraState | None, *, fast: bool, allow_new_ports: bool = False
    ) -> PostgresServer:
        """Like `_nats_server`, for Postgres (its data directory is the same either way)."""
        if previous is not None:
            server = PostgresServer(PostgresConfig(port=previous.postgres.port, base_dir=self.postgres_dir, fast=fast))
            if not allow_new_ports or server.pid is not None or _ports_free(previous.postgres.port):
                return server
        [port] = free_ports(1)
        return PostgresServer(PostgresConfig(port=port, base_dir=self.postgres_dir, fast=fast))

    def _write_state(self, state: InfraState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, self.state_file)

    def _purge(self) -> None:
        """Delete only what `up` created, then the run directory if nothing else is in it."""
        for directory in (self.nats_dir, self.postgres_dir):
            shutil.rmtree(directory, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the user keeps other files here
            self.run_dir.rmdir()


def _ports_free(*ports: int) -> bool:
    return all(is_port_free(port) for port in ports)


def _state(nats: NatsServer, postgres: PostgresServer, *, fast: bool) -> InfraState:
    nc, pc = nats.config, postgres.config
    return InfraState(
        fast=fast,
        nats=NatsState(pid=nats.pid, port=nc.port, monitor_port=nc.monitor_port, url=nc.url,
                       monitor_url=nc.monitor_url, store_dir=str(nc.store_dir), log_file=str(nc.log_file)),
        postgres=PostgresState(pid=postgres.pid, port=pc.port, database_url=pc.urls.async_url,
                               sync_database_url=pc.urls.sync_url, data_dir=str(pc.data_dir),
                               log_file=str(pc.log_file)),
    )  # fmt: skip
