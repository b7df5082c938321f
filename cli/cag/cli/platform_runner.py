"""The platform as processes on one machine: infra, then a local S3 endpoint, registry, cache pool, router,
compiler and fallback, each its own process.

`honcho` (a Procfile runner) supervises the S3 endpoint and the four services: it starts them, prefixes and
multiplexes their output, and when one of them exits or it is told to stop, it stops the others (SIGTERM to each
process group, SIGKILL after a grace period). `up` runs that supervisor detached and returns once every service
answers its gRPC health check (and the endpoint holds the module bucket); `down` stops the supervisor, makes sure
nothing it started is left, and stops the infra.

Layout under `<run dir>/platform/` (the plan holds the services' credentials, so it is 0600 like the
infra's state)::

    plan.json        addresses and environment of each service, the supervisor's pid
    platform.log     the services' output, prefixed by their names
    traces-<service>.jsonl  each service's spans, one JSON object per line (OTEL_EXPORTER_OTLP_ENDPOINT, when
                     set in the environment of `up`, sends them to a collector instead)
    cachepool-cache/ the cache pool's local disk tier
    modules/         the modules the compiler service builds (recompiles after invalidations) before it uploads
                     them to the local S3 endpoint (bucket `cag-modules`, prefix `modules/`), which the cache
                     pool fetches them from by their s3:// URI; the endpoint keeps objects in memory only
    promotions/      sources the fallback writes for approved promotion candidates (the compiler reads them)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cag.errors import UnavailableError
from cag.infra.ports import LOOPBACK, is_port_free
from cag.infra.processes import children_of, pid_alive, terminate, wait_until
from cag.infra.s3_endpoint import LocalS3
from cag.infra.secret_files import PRIVATE_DIR_MODE, write_secret
from cag.infra.stack import InfraStack, InfraState

PLATFORM_DIR = "platform"
PLAN_FILE = "plan.json"
LOG_FILE = "platform.log"
# Preferred ports (the ones the services default to); a busy one is replaced by a free one.
DEFAULT_PORTS = {
    "s3": 50050, "registry": 50051, "cachepool": 50052, "router": 50053, "compiler": 50054, "fallback": 50055,
}  # fmt: skip
HEALTH_NAMES = {
    "registry": "cag.v1.RegistryService",
    "cachepool": "cag.v1.CachePoolService",
    "router": "cag.v1.RouterService",
    "compiler": "cag.v1.CompilerService",
    "fallback": "cag.v1.FallbackService",
}
# The cache pool loads the model and replays the registry before it reports SERVING.
UP_TIMEOUT_S = 300.0
# The cache pool's engine memory: room for a few modules of several thousand tokens and the running requests'
# own rows (SmolLM2 fp32 takes 46 KiB per token: about 1.1 GiB).
ENGINE_KV_TOKENS = 24576
STOP_TIMEOUT_S = 30.0
# The compiler service uploads the modules it builds here; the cache pool fetches them by their s3:// URI.
MODULE_BUCKET = "cag-modules"
OBJECT_STORE_PREFIX = f"s3://{MODULE_BUCKET}/modules/"


@dataclass(frozen=True, kw_only=True)
class ServicePlan:
    name: str
    address: str
    command: str
    env: dict[str, str] = field(repr=False)  # credentials inside: never printed


@dataclass(frozen=True, kw_only=True)
class PlatformPlan:
    services: list[ServicePlan]
    supervisor_pid: int | None = None

    def address_of(self, name: str) -> str:
        return next(s.address for s in self.services if s.name == name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PlatformPlan:
        raw = json.loads(text)
        return cls(services=[ServicePlan(**s) for s in raw["services"]], supervisor_pid=raw.get("supervisor_pid"))


@dataclass(frozen=True, kw_only=True)
class ServiceStatus:
    name: str
    address: str
    serving: bool
    detail: str


class Platform:
    """The services of one run directory (`cag infra up`'s), with the models of `home`."""

    def __init__(
        self,
        run_dir: Path,
        home: Path,
        *,
        model: str,
        base_env: dict[str, str],
        service_env: dict[str, dict[str, str]] | None = None,
        pool_replicas: int = 1,
    ) -> None:
        """base_env: what every service inherits (PATH, CAG_NUM_THREADS, ...); service_env: settings of one
        service that override the plan's (a benchmark's queue limits, say); pool_replicas: cache-pool processes
        (more than one: each announces itself and the router routes among them)."""
        if pool_replicas < 1:
            raise ValueError("pool_replicas must be at least 1")
        self.pool_replicas = pool_replicas
        self.run_dir = run_dir.absolute()
        self.home = home
        self.model = model
        self.base_env = base_env
        self.service_env = service_env or {}
        self.infra = InfraStack(self.run_dir)

    @property
    def dir(self) -> Path:
        return self.run_dir / PLATFORM_DIR

    @property
    def plan_file(self) -> Path:
        return self.dir / PLAN_FILE

    @property
    def log_file(self) -> Path:
        return self.dir / LOG_FILE

    def load_plan(self) -> PlatformPlan | None:
        try:
            return PlatformPlan.from_json(self.plan_file.read_text())
        except FileNotFoundError:
            return None

    def is_up(self) -> bool:
        plan = self.load_plan()
        return plan is not None and plan.supervisor_pid is not None and pid_alive(plan.supervisor_pid)

    # ------------------------------------------------------------------ up

    def up(self, *, timeout_s: float = UP_TIMEOUT_S) -> PlatformPlan:
        """Start infra and the detached supervisor; return once every service is SERVING."""
        if self.is_up():
            plan = self.load_plan()
            assert plan is not None
            self.wait_serving(plan, timeout_s)
            return plan
        plan = self.plan(self.infra.up(fast=True))
        self.dir.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        write_secret(self.plan_file, plan.to_json())
        with self.log_file.open("ab") as log:
            # A session of its own: the terminal's Ctrl-C does not reach it, `down` stops it.
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "cag.cli.platform_runner", str(self.run_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.base_env,
            )
        plan = PlatformPlan(services=plan.services, supervisor_pid=supervisor.pid)
        write_secret(self.plan_file, plan.to_json())
        try:
            self.wait_serving(plan, timeout_s, supervisor=supervisor)
        except BaseException:
            self.down(keep_infra=True)
            raise
        return plan

    def plan(self, infra: InfraState) -> PlatformPlan:
        ports = {name: _port(preferred) for name, preferred in DEFAULT_PORTS.items()}
        addresses = {name: f"{LOOPBACK}:{port}" for name, port in ports.items()}
        s3 = LocalS3(port=ports["s3"], buckets=(MODULE_BUCKET,))
        key = infra.auth_key_file
        shared = {**self.base_env, "CAG_HOME": str(self.home), "CAG_AUTH_KEY_FILE": key}
        registry = {
            "CAG_REGISTRY_ADDRESS": addresses["registry"],
            "CAG_REGISTRY_DATABASE_URL": infra.database_url,
            "CAG_REGISTRY_NATS_URL": infra.nats_url_for("registry"),
        }
        cachepool = {
            "CAG_CACHEPOOL_ADDRESS": addresses["cachepool"],
            "CAG_CACHEPOOL_REGISTRY_ADDRESS": addresses["registry"],
            "CAG_CACHEPOOL_NATS_URL": infra.nats_url_for("cachepool"),
            "CAG_CACHEPOOL_MODEL": self.model,
            "CAG_CACHEPOOL_CACHE_DIR": str(self.dir / "cachepool-cache"),
            "CAG_CACHEPOOL_KV_CAPACITY_TOKENS": str(ENGINE_KV_TOKENS),
            **s3.env("CAG_CACHEPOOL_"),
        }
        router = {
            "CAG_ROUTER_ADDRESS": addresses["router"],
            "CAG_ROUTER_REGISTRY_ADDRESS": addresses["registry"],
            "CAG_ROUTER_CACHEPOOL_ADDRESS": addresses["cachepool"],
            "CAG_ROUTER_NATS_URL": infra.nats_url_for("router"),
            "CAG_ROUTER_FALLBACK_ADDRESS": addresses["fallback"],
        }
        if self.pool_replicas > 1:
            router["CAG_ROUTER_REPLICA_DISCOVERY"] = "true"
        compiler = {
            "CAG_COMPILER_ADDRESS": addresses["compiler"],
            "CAG_COMPILER_REGISTRY_ADDRESS": addresses["registry"],
            "CAG_COMPILER_DATABASE_URL": infra.database_url,
            "CAG_COMPILER_NATS_URL": infra.nats_url_for("compiler"),
            "CAG_COMPILER_OUT_DIR": str(self.dir / "modules"),
            "CAG_COMPILER_OBJECT_STORE_PREFIX": OBJECT_STORE_PREFIX,
            **s3.env("CAG_COMPILER_"),
        }
        fallback = {
            "CAG_FALLBACK_ADDRESS": addresses["fallback"],
            "CAG_FALLBACK_REGISTRY_ADDRESS": addresses["registry"],
            "CAG_FALLBACK_CACHEPOOL_ADDRESS": addresses["cachepool"],
            "CAG_FALLBACK_COMPILER_ADDRESS": addresses["compiler"],
            "CAG_FALLBACK_DATABASE_URL": infra.database_url,
            "CAG_FALLBACK_NATS_URL": infra.nats_url_for("fallback"),
            "CAG_FALLBACK_PROMOTION_MODEL": self.model,
            "CAG_FALLBACK_PROMOTIONS_DIR": str(self.dir / "promotions"),
            **s3.env("CAG_FALLBACK_"),
        }
        own = {
            "s3": {}, "registry": registry, "cachepool": cachepool, "router": router, "compiler": compiler,
            "fallback": fallback,
        }  # fmt: skip
        commands = {name: f"{sys.executable} -m cag.{name}" for name in DEFAULT_PORTS} | {"s3": shlex.join(s3.argv())}
        for name, env in self._replicas(cachepool).items():
            addresses[name], own[name], commands[name] = env["CAG_CACHEPOOL_ADDRESS"], env, commands["cachepool"]
        return PlatformPlan(
            services=[
                ServicePlan(
                    name=name,
                    address=addresses[name],
                    command=commands[name],
                    env={
                        **shared,
                        "CAG_TRACES_FILE": str(self.dir / f"traces-{name}.jsonl"),
                        **own[name],
                        **self.service_env.get(_kind(name), {}),
                    },
                )
                for name in self._service_names()
            ]
        )

    def _replicas(self, first: dict[str, str]) -> dict[str, dict[str, str]]:
        """The cache-pool replicas after the first: each on a port, disk folder and replica id of its own."""
        if self.pool_replicas == 1:
            return {}
        first["CAG_CACHEPOOL_INSTANCE"] = "cachepool-1"
        return {
            f"cachepool-{i}": first | {
                "CAG_CACHEPOOL_ADDRESS": f"{LOOPBACK}:{_port(DEFAULT_PORTS['cachepool'] + 100 * (i - 1))}",
                "CAG_CACHEPOOL_CACHE_DIR": str(self.dir / f"cachepool-{i}-cache"),
                "CAG_CACHEPOOL_INSTANCE": f"cachepool-{i}",
            }
            for i in range(2, self.pool_replicas + 1)
        }  # fmt: skip

    def _service_names(self) -> list[str]:
        """Services in start order: the replicas right after the first cache pool."""
        names = []
        for name in DEFAULT_PORTS:
            names.append(name)
            if name == "cachepool":
                names += [f"cachepool-{i}" for i in range(2, self.pool_replicas + 1)]
        return names

    def wait_serving(
        self, plan: PlatformPlan, timeout_s: float, *, supervisor: subprocess.Popen[bytes] | None = None
    ) -> None:
        """Every service SERVING within `timeout_s`; UnavailableError (with the log's tail) otherwise."""
        deadline = time.monotonic() + timeout_s
        for service in plan.services:
            while not _serving(service.name, service.address):
                if supervisor is not None and supervisor.poll() is not None:
                    raise UnavailableError(f"the platform stopped while starting; its log:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise UnavailableError(
                        f"{service.name} did not become healthy at {service.address} within {timeout_s:.0f} s; "
                        f"its log:\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # ------------------------------------------------------------------ down / status

    def down(self, *, keep_infra: bool = False, purge: bool = False) -> bool:
        """Stop the services (and, unless `keep_infra`, the infra, deleting its data with `purge`); True when
        something was recorded."""
        plan = self.load_plan()
        if plan is not None and plan.supervisor_pid is not None:
            _stop_tree(plan.supervisor_pid)
        with contextlib.suppress(FileNotFoundError):
            self.plan_file.unlink()
        had_infra = False if keep_infra else self.infra.down(purge=purge)
        return plan is not None or had_infra

    def status(self) -> list[ServiceStatus]:
        plan = self.load_plan()
        if plan is None:
            return []
        alive = plan.supervisor_pid is not None and pid_alive(plan.supervisor_pid)
        return [
            ServiceStatus(
                name=s.name,
                address=s.address,
                serving=alive and _serving(s.name, s.address),
                detail="" if alive else "supervisor not running",
            )
            for s in plan.services
        ]


# CAG_ settings the services inherit: the engine (which one, and its threads) is the platform's, not the command's.
SHARED_SETTINGS = frozenset({"CAG_NUM_THREADS", "CAG_ENGINE"})


def inherited_env() -> dict[str, str]:
    """What the services inherit from this process: everything but CAG_ settings (which name this command's own
    registry, token, ...; the plan sets the services' own), except the engine's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CAG_") or k in SHARED_SETTINGS}


def supervise(run_dir: Path) -> int:
    """The supervisor's body: run every planned service under honcho until one exits or SIGTERM arrives."""
    from honcho.manager import Manager  # type: ignore[import-untyped]
    from honcho.printer import Printer  # type: ignore[import-untyped]

    plan = PlatformPlan.from_json((run_dir / PLATFORM_DIR / PLAN_FILE).read_text())
    manager = Manager(Printer(sys.stdout, colour=False))
    for service in plan.services:
        manager.add_process(service.name, service.command, env=service.env)
    manager.loop()
    return int(manager.returncode or 0)


def _port(preferred: int) -> int:
    from cag.infra.ports import free_port

    return preferred if is_port_free(preferred) else free_port()


def _kind(name: str) -> str:
    """The service a planned process runs ("cachepool-2" is a cache pool)."""
    return name.partition("-")[0]


def _serving(name: str, address: str) -> bool:
    """The service answers its health check with SERVING (health checks need no credentials); the S3 endpoint
    holds the module bucket."""
    if name == "s3":
        return LocalS3(port=int(address.rpartition(":")[2]), buckets=(MODULE_BUCKET,)).is_ready()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=HEALTH_NAMES[_kind(name)]), timeout=2.0)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _stop_tree(pid: int) -> None:
    """SIGTERM the supervisor (it stops its services), then SIGKILL anything of its tree still running."""
    tree = _descendants(pid)
    terminate(pid, STOP_TIMEOUT_S)
    for child in tree:
        if pid_alive(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(c) for c in tree), STOP_TIMEOUT_S)


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        children = children_of(frontier.pop())
        found += children
        frontier += children
    return found


if __name__ == "__main__":
    raise SystemExit(supervise(Path(sys.argv[1])))
