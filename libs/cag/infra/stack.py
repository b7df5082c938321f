"""NATS and Postgres brought up together under one run directory, findable from another process.

Layout of a run directory::

    state.json      ports, pids, URLs (with credentials) and directories of the last `up` (0600)
    admin.env       shell `export` lines for the admin identity and the database (0600)
    auth.key        the service-token signing key: 32 random bytes, hex (0600), kept across down/up
    nats/           JetStream store, nats-server.log, nats-server.conf and credentials.json (0600)
    postgres/       data/, sock/ (0700), password (0600), postgres.log, pg_ctl.log

Services started without explicit URLs find the servers through `local_service_urls`, each with its
own NATS identity.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cag.infra.errors import InfraError
from cag.infra.nats import NatsConfig, NatsServer
from cag.infra.nats_auth import ADMIN
from cag.infra.ports import free_ports, is_port_free
from cag.infra.postgres import PostgresConfig, PostgresServer
from cag.infra.secret_files import ensure_auth_key, write_secret

STATE_FILE = "state.json"
ENV_FILE = "admin.env"
AUTH_KEY_FILE = "auth.key"
# Version 2: servers require credentials; the state holds them. A version-1 state still loads (its
# servers can be stopped) but has no credentials to hand out.
STATE_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class NatsState:
    pid: int | None
    port: int
    monitor_port: int
    url: str  # without credentials
    monitor_url: str
    store_dir: str
    log_file: str
    urls: dict[str, str] = field(default_factory=dict)  # identity → URL with its credentials
    credentials_file: str = ""


@dataclass(frozen=True, kw_only=True)
class PostgresState:
    pid: int | None
    port: int
    database_url: str
    sync_database_url: str
    data_dir: str
    log_file: str
    password_file: str = ""


@dataclass(frozen=True, kw_only=True)
class InfraState:
    """What `state.json` records: enough for `down`/`status` in another process."""

    fast: bool
    nats: NatsState
    postgres: PostgresState
    auth_key_file: str = ""

    @property
    def database_url(self) -> str:
        return self.postgres.database_url

    @property
    def sync_database_url(self) -> str:
        return self.postgres.sync_database_url

    @property
    def nats_url(self) -> str:
        """The admin identity's URL (tests, tooling, the demo); services use `nats_url_for`."""
        return self.nats_url_for(ADMIN)

    def nats_url_for(self, identity: str) -> str:
        """`identity`'s URL with its credentials; `InfraError` when the state has none (an older `up`)."""
        try:
            return self.nats.urls[identity]
        except KeyError:
            raise InfraError(
                f"no NATS credentials for {identity!r} recorded (servers started by an older cag?): "
                "run `cag infra down` and `cag infra up`"
            ) from None

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> InfraState:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            fast=bool(raw["fast"]),
            nats=NatsState(**raw["nats"]),
            postgres=PostgresState(**raw["postgres"]),
            auth_key_file=str(raw.get("auth_key_file", "")),
        )


@dataclass(frozen=True, kw_only=True)
class ServiceUrls:
    """Where one identity finds the embedded servers: the database (async URL), its NATS URL, and the
    service-token signing key."""

    database_url: str | None
    nats_url: str | None
    auth_key_file: str | None = None


def local_service_urls(run_dir: Path, identity: str) -> ServiceUrls | None:
    """The URLs recorded by `cag infra up` in `run_dir` for `identity`; None when nothing is recorded.

    Whether the servers still run is not checked: connecting says so soon enough.
    """
    state = InfraStack(run_dir).load_state()
    if state is None:
        return None
    return ServiceUrls(
        database_url=state.database_url or None,
        nats_url=state.nats.urls.get(identity),
        auth_key_file=state.auth_key_file or None,
    )


@dataclass(frozen=True, kw_only=True)
class ServerStatus:
    name: str
    up: bool
    url: str | None
    pid: int | None
    detail: str = ""
    credentials: str | None = None  # the file that holds them (never the secret itself)


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

    @property
    def env_file(self) -> Path:
        """`export` lines for a shell: the admin NATS identity and the database (0600)."""
        return self.run_dir / ENV_FILE

    @property
    def auth_key_file(self) -> Path:
        """The key that signs the platform's service tokens (created by `up`, kept across down/up)."""
        return self.run_dir / AUTH_KEY_FILE

    def load_state(self) -> InfraState | None:
        try:
            return InfraState.from_json(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InfraError(f"unreadable {self.state_file} ({e!r}): `cag infra down --purge` starts afresh") from None

    def is_up(self) -> bool:
        return all(s.up for s in self.status())

    def up(self, *, fast: bool = False, timeout_s: float = 30.0) -> InfraState:
        """Start whichever server is not running, wait until both are healthy, record and return the state."""
        previous = self.load_state()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ensure_auth_key(self.auth_key_file)
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
        state = _state(nats, postgres, fast=fast, auth_key_file=self.auth_key_file)
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
            ServerStatus(name="nats", up=nats.pid is not None and nats.is_healthy(), url=nats.config.url,
                         pid=nats.pid, detail=f"monitor {nats.config.monitor_url}",
                         credentials=str(nats.config.credentials_file)),
            ServerStatus(name="postgres", up=postgres.is_ready(), url=postgres.urls.redacted, pid=postgres.pid,
                         detail=f"data {postgres.config.data_dir}",
                         credentials=str(postgres.config.password_file)),
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
        """state.json and admin.env, both 0600: they hold credentials."""
        write_secret(self.state_file, state.to_json())
        exports = {"CAG_DATABASE_URL": state.database_url, "CAG_NATS_URL": state.nats_url}
        write_secret(self.env_file, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items()))

    def _purge(self) -> None:
        """Delete only what `up` created, then the run directory if nothing else is in it."""
        for directory in (self.nats_dir, self.postgres_dir):
            shutil.rmtree(directory, ignore_errors=True)
        for path in (self.state_file, self.env_file, self.auth_key_file):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the user keeps other files here
            self.run_dir.rmdir()


def _ports_free(*ports: int) -> bool:
    return all(is_port_free(port) for port in ports)


def _state(nats: NatsServer, postgres: PostgresServer, *, fast: bool, auth_key_file: Path) -> InfraState:
    nc, pc = nats.config, postgres.config
    return InfraState(
        fast=fast,
        nats=NatsState(pid=nats.pid, port=nc.port, monitor_port=nc.monitor_port, url=nc.url,
                       monitor_url=nc.monitor_url, store_dir=str(nc.store_dir), log_file=str(nc.log_file),
                       urls=nats.urls, credentials_file=str(nc.credentials_file)),
        postgres=PostgresState(pid=postgres.pid, port=pc.port, database_url=pc.urls.async_url,
                               sync_database_url=pc.urls.sync_url, data_dir=str(pc.data_dir),
                               log_file=str(pc.log_file), password_file=str(pc.password_file)),
        auth_key_file=str(auth_key_file),
    )  # fmt: skip
