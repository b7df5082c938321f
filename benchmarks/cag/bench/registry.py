"""`cag bench registry`: ResolveRoute latency over gRPC and invalidation propagation, at 100k modules.

One run: a registry database is migrated and bulk-loaded (COPY) with a realistic population (tenants
× routes, chains system → tools → domain, several versions per route with one active), analysed,
and served by an in-process `RegistryApp`. Then:

* ResolveRoute: sequential calls from one gRPC client on random routes with an active version,
  after a warm-up, then the same number of calls from several concurrent clients (throughput).
* Propagation: one `cag.invalidate.source` event at a time on JetStream targeting one served module,
  timed until the matching `cag.module.invalidated` event arrives on a durable pull consumer. The
  module's `state_changed_at` and the outbox row's `published_at` split it into segments.

Servers: `--database-url`/`--nats-url` (CAG_DATABASE_URL/CAG_NATS_URL) when given — the population
goes into a scratch database created on that server and dropped after — else embedded Postgres and
NATS in a temporary run directory, stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.js.api import ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token
from cag.bench.arguments import positive_int
from cag.bench.output import emit_report
from cag.events.schemas import Envelope, SourceChangedV1
from cag.infra.database import DatabaseUrls, create_database, drop_database
from cag.infra.ports import free_port
from cag.infra.processes import children_of, pid_alive
from cag.infra.stack import InfraStack
from cag.metadata import FORMAT_VERSION
from cag.registry.db import migrate
from cag.rpc.auth import authenticated_channel
from cag.settings import CagSettings, InfraSettings
from cag.v1 import registry_pb2, registry_pb2_grpc

DEFAULT_OUT = Path("benchmarks/results/registry.json")
TENANTS = 200
ROUTES_PER_TENANT = 50
TOOLS_ROUTES = 9  # routes 1..9 are tools modules on the system module; the rest are domain modules on a tool
WARMUP_CALLS = 100
CONCURRENT_CLIENTS = 8
COPY_BATCH = 10_000
DRAFT_FRACTION = 0.03  # routes whose newest version is still validating (the active one is the previous)
OLD_VERSION_STATES = ("published", "published", "invalidated", "expired", "stale")
MODELS = (("smollm2", "rev-a", "tok-1"), ("smollm2", "rev-b", "tok-1"), ("tinyllama", "rev-x", "tok-2"))
LAYOUTS = (("support.v1", "lh-support-1"), ("support.v1", "lh-support-2"), ("agent.v3", "lh-agent-9"))
EVENT_TIMEOUT_S = 10.0
MAX_EVENT_GAP_S = 0.05  # events arrive at random moments, not in step with the registry's poll loops
RESOLVE_P99_MS = 5.0
PROPAGATION_P99_MS = 200.0


# ---------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class Latency:
    """Milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float

    @classmethod
    def of(cls, samples_s: Sequence[float]) -> Latency:
        ms = sorted(s * 1e3 for s in samples_s)
        return cls(count=len(ms), mean_ms=statistics.fmean(ms), p50_ms=percentile(ms, 50),
                   p90_ms=percentile(ms, 90), p99_ms=percentile(ms, 99), max_ms=ms[-1], min_ms=ms[0])  # fmt: skip


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@dataclass(frozen=True, kw_only=True)
class MachineInfo:
    python_version: str
    platform: str
    cpu_count: int | None
    postgres_version: str
    infrastructure: str  # "embedded (fast mode)" or "external"
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class Parameters:
    modules: int
    tenants: int
    routes_per_tenant: int
    calls: int
    warmup_calls: int
    concurrent_clients: int
    events: int
    seed: int
    outbox_poll_s: float
    registry_pull: str


@dataclass(frozen=True, kw_only=True)
class PopulationStats:
    modules: int
    routes: int
    tenants: int
    layouts: int
    states: dict[str, int]
    chain_depths: dict[str, int]  # of the active chains (1 = the system module alone)
    load_s: float
    analyze_s: float


@dataclass(frozen=True, kw_only=True)
class ResolveResults:
    sequential: Latency
    concurrent: Latency
    concurrent_clients: int
    concurrent_throughput_rps: float
    chain_length_mean: float


@dataclass(frozen=True, kw_only=True)
class PropagationResults:
    total: Latency  # publish of the trigger → matching cag.module.invalidated received
    event_to_db: Latency  # trigger's occurred_at → the module's state_changed_at (transaction start)
    db_to_received: Latency  # state_changed_at → received
    db_to_relay_published: Latency  # state_changed_at → the outbox row's published_at (JetStream acked)
    timeouts: int


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    value: float
    comparison: str
    threshold: float
    passed: bool


@dataclass(frozen=True, kw_only=True)
class RegistryReport:
    created_at: str
    machine: MachineInfo
    parameters: Parameters
    population: PopulationStats
    resolve_route: ResolveResults
    propagation: PropagationResults
    targets: list[Target]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---------------------------------------------------------------- population


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    modules: int
    calls: int
    events: int
    concurrency: int = CONCURRENT_CLIENTS
    seed: int = 7
    tenants: int = TENANTS
    routes_per_tenant: int = ROUTES_PER_TENANT


@dataclass(kw_only=True)
class Population:
    rows: list[tuple[Any, ...]]  # MODULE_COLUMNS, parents before children
    routes: list[tuple[str, str, str, int]]  # tenant, route, active module id, active version
    sources: dict[tuple[str, str], str]  # (tenant, source_uri) → checksum
    leaves: list[tuple[str, str, str, str]]  # served domain modules: module id, tenant, source_uri, checksum
    states: Counter[str] = field(default_factory=Counter)
    depths: Counter[int] = field(default_factory=Counter)


MODULE_COLUMNS = (
    "module_id", "tenant_id", "route", "version", "state", "state_reason", "source_uri", "model_name",
    "model_revision", "tokenizer_revision", "context_checksum", "source_checksum", "token_count", "dtype",
    "storage_uri", "acl_scope", "acl_principal", "created_at", "expires_at", "layout_id", "layout_hash",
    "parent_id", "parent_chain_hash", "chain_hash", "engine_fingerprint", "golden_status", "golden_results",
    "tensor_checksum", "format_version", "registered_at", "published_at", "state_changed_at",
)  # fmt: skip


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def route_names(count: int) -> list[str]:
    return ["system"] + [f"tools-{i:02d}" if i <= TOOLS_ROUTES else f"route-{i:03d}" for i in range(1, count)]


def _parent_route(index: int) -> int | None:
    """The route whose active module a route's modules are built on: system ← tools ← domain."""
    if index == 0:
        return None
    if index <= TOOLS_ROUTES:
        return 0
    return 1 + (index - TOOLS_ROUTES - 1) % TOOLS_ROUTES


def generate_population(config: BenchConfig) -> Population:
    """`config.modules` modules over tenants × routes; every route has an active published version."""
    rng = random.Random(config.seed)
    routes_per_tenant = config.routes_per_tenant
    per_tenant = [
        config.modules // config.tenants + (t < config.modules % config.tenants) for t in range(config.tenants)
    ]
    if min(per_tenant) < routes_per_tenant:
        raise ValueError(
            f"{config.modules} modules cannot give {config.tenants} tenants {routes_per_tenant} routes each"
        )
    names = route_names(routes_per_tenant)
    now = datetime.now(UTC)
    pop = Population(rows=[], routes=[], sources={}, leaves=[])
    for t, count in enumerate(per_tenant):
        tenant = f"t{t:04d}"
        model_name, model_revision, tokenizer = MODELS[t % len(MODELS)]
        layout_id, layout_hash = LAYOUTS[t % len(LAYOUTS)]
        versions = [count // routes_per_tenant + (r < count % routes_per_tenant) for r in range(routes_per_tenant)]
        active: list[tuple[str, str]] = []  # per route index: (module id, chain hash)
        depth_of: list[int] = []
        for r, route in enumerate(names):
            parent_index = _parent_route(r)
            parent_id, parent_chain = active[parent_index] if parent_index is not None else (None, None)
            depth_of.append(1 if parent_index is None else depth_of[parent_index] + 1)
            n = versions[r]
            draft = n > 1 and rng.random() < DRAFT_FRACTION
            active_version = n - 1 if draft else n
            for v in range(1, n + 1):
                module_id = f"{tenant}.{route}.v{v}"
                if v == active_version:
                    state = "published"
                elif v > active_version:
                    state = "validating"
                else:
                    state = rng.choice(OLD_VERSION_STATES)
                source_uri = f"kb://{tenant}/{route}/v{v}"
                checksum = _h(f"src:{module_id}")
                chain = _h(f"chain:{parent_chain}:{module_id}")
                published_at = now if state != "validating" else None
                pop.rows.append((
                    module_id, tenant, route, v if state != "validating" else None, state,
                    "" if state in ("published", "validating") else f"bench: {state}", source_uri, model_name,
                    model_revision, tokenizer, _h(f"ctx:{module_id}"), checksum, rng.randint(512, 8192), "fp16",
                    f"file:///modules/{tenant}/{module_id}.cagkv", "tenant", "", "2026-01-01T00:00:00Z", None,
                    layout_id, layout_hash, parent_id, parent_chain, chain, "llama;bench", "passed", "[]",
                    _h(f"tensor:{module_id}"), FORMAT_VERSION, now, published_at, now,
                ))  # fmt: skip
                pop.states[state] += 1
                pop.sources[(tenant, source_uri)] = checksum
                if v == active_version:
                    active.append((module_id, chain))
                    pop.routes.append((tenant, route, module_id, v))
                    pop.depths[depth_of[r]] += 1
                    if r > TOOLS_ROUTES:
                        pop.leaves.append((module_id, tenant, source_uri, checksum))
    return pop


def _batches(rows: Sequence[tuple[Any, ...]], size: int) -> Iterator[Sequence[tuple[Any, ...]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def load_population(libpq_url: str, pop: Population, advance: Callable[[int], None]) -> tuple[float, float]:
    """COPY the population in (modules in batches, then routes, layouts, sources), then ANALYZE.

    Returns (load seconds, analyze seconds)."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY layouts (layout_hash, layout_id, body) FROM STDIN") as copy:
                for layout_id, layout_hash in LAYOUTS:
                    copy.write_row((layout_hash, layout_id, json.dumps({"layout_id": layout_id, "hash": layout_hash})))
            with cur.copy("COPY model_revisions (model_name, model_revision, tokenizer_revision) FROM STDIN") as copy:
                for model in MODELS:
                    copy.write_row(model)
            with cur.copy("COPY sources (tenant_id, uri, checksum) FROM STDIN") as copy:
                for (tenant, uri), checksum in pop.sources.items():
                    copy.write_row((tenant, uri, checksum))
            for batch in _batches(pop.rows, COPY_BATCH):
                with cur.copy(f"COPY modules ({', '.join(MODULE_COLUMNS)}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
                advance(len(batch))
            with cur.copy("COPY routes (tenant_id, route, active_module_id, active_version) FROM STDIN") as copy:
                for route_row in pop.routes:
                    copy.write_row(route_row)
        conn.commit()
        loaded = time.perf_counter()
        conn.autocommit = True
        conn.execute("ANALYZE")
    return loaded - started, time.perf_counter() - loaded


# ---------------------------------------------------------------- servers


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    """Where the servers are: given (`--database-url`/`--nats-url`) or None for embedded ones."""

    database_url: str | None
    nats_url: str | None


@dataclass(frozen=True, kw_only=True)
class Servers:
    database: DatabaseUrls  # the scratch database the benchmark owns
    nats_url: str
    postgres_version: str
    infrastructure: str


@contextlib.contextmanager
def servers(endpoints: Endpoints) -> Iterator[Servers]:
    """Embedded servers in a temporary run directory for whatever is not given, and a scratch database.

    Everything started here is stopped on the way out, and checked to be gone."""
    run_dir = Path(tempfile.mkdtemp(prefix="cag-bench-registry-"))
    run_dir.chmod(0o755)  # the postgres system user (when running as root) must enter it
    stack = InfraStack(run_dir)
    embedded = endpoints.database_url is None or endpoints.nats_url is None
    pids: list[int] = []
    try:
        state = stack.up(fast=True) if embedded else None
        if state is not None:
            pids = [p for p in (state.nats.pid, state.postgres.pid) if p is not None]
            pids += children_of(state.postgres.pid) if state.postgres.pid is not None else []
        admin = DatabaseUrls.parse(endpoints.database_url or (state.database_url if state else ""))
        nats_url = endpoints.nats_url or (state.nats_url if state else "")
        name = f"cag_bench_registry_{uuid.uuid4().hex[:8]}"
        database = create_database(admin, name, extensions=())
        try:
            with psycopg.connect(database.libpq_url) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            kind = ", ".join(
                f"{name} {'external' if given else 'embedded (fast mode)'}"
                for name, given in (("postgres", endpoints.database_url), ("nats", endpoints.nats_url))
            )
            yield Servers(database=database, nats_url=nats_url, postgres_version=str(row[0] if row else "?"),
                          infrastructure=kind)  # fmt: skip
        finally:
            drop_database(admin, name)
    finally:
        if embedded:
            stack.down(purge=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    left = [p for p in pids if pid_alive(p)]
    if left:
        raise RuntimeError(f"server processes left running after the benchmark: {left}")


@contextlib.asynccontextmanager
async def running_registry(database_url: str, nats_url: str) -> AsyncIterator[tuple[str, Any, str]]:
    """The registry service in this process on a free loopback port: (address, its settings, a read token
    for every tenant, as a router would hold)."""
    from cag.registry.app import RegistryApp
    from cag.registry.settings import RegistrySettings

    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="cag-bench-key-") as key_dir:
        key = secrets.token_bytes(32)
        key_file = Path(key_dir) / "auth.key"
        key_file.touch(mode=0o600)
        key_file.write_text(key.hex())
        infra = InfraSettings(database_url=database_url, nats_url=nats_url, auth_key_file=key_file)
        settings = RegistrySettings(infra=infra, address=address)
        token = issue_token(key, "service:bench-router", [Scope.READ], [ALL_TENANTS], 24 * 3600)
        app = RegistryApp(settings)
        try:
            await app.start()
            yield address, settings, token
        finally:
            await app.stop()


# ---------------------------------------------------------------- measurements


async def _resolve(stub: registry_pb2_grpc.RegistryServiceAsyncStub, tenant: str, route: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = await stub.ResolveRoute(registry_pb2.ResolveRouteRequest(tenant_id=tenant, route=route))
    return time.perf_counter() - started, len(response.chain)


async def measure_resolve(
    address: str, token: str, pop: Population, config: BenchConfig, advance: Callable[[int], None]
) -> ResolveResults:
    rng = random.Random(config.seed + 1)
    pairs = [(tenant, route) for tenant, route, _, _ in pop.routes]
    async with authenticated_channel(address, token) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for tenant, route in rng.choices(pairs, k=WARMUP_CALLS):
            await _resolve(stub, tenant, route)
        advance(WARMUP_CALLS)
        sequential: list[float] = []
        chains: list[int] = []
        for tenant, route in rng.choices(pairs, k=config.calls):
            elapsed, length = await _resolve(stub, tenant, route)
            sequential.append(elapsed)
            chains.append(length)
            advance(1)

    concurrent: list[float] = []
    per_client = max(1, config.calls // config.concurrency)

    async def client(seed: int) -> None:
        crng = random.Random(seed)
        async with authenticated_channel(address, token) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            for tenant, route in crng.choices(pairs, k=10):  # connect and warm this channel up
                await _resolve(stub, tenant, route)
            await ready.wait()
            for tenant, route in crng.choices(pairs, k=per_client):
                concurrent.append((await _resolve(stub, tenant, route))[0])
                advance(1)

    ready = asyncio.Event()
    tasks = [asyncio.create_task(client(config.seed + 100 + i)) for i in range(config.concurrency)]
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    return ResolveResults(
        sequential=Latency.of(sequential),
        concurrent=Latency.of(concurrent),
        concurrent_clients=config.concurrency,
        concurrent_throughput_rps=len(concurrent) / wall,
        chain_length_mean=statistics.fmean(chains),
    )


@dataclass(frozen=True, kw_only=True)
class Sent:
    event_id: str
    module_id: str
    occurred_at: datetime
    latency_s: float
    received_at: datetime


async def measure_propagation(
    nats_url: str, libpq_url: str, pop: Population, config: BenchConfig, advance: Callable[[int], None]
) -> PropagationResults:
    rng = random.Random(config.seed + 2)
    targets = rng.sample(pop.leaves, k=min(config.events, len(pop.leaves)))
    client = await nats.connect(nats_url)
    js = client.jetstream()
    durable = f"bench-registry-{uuid.uuid4().hex[:8]}"
    sub = await js.pull_subscribe("cag.module.invalidated", durable=durable, stream="cag",
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))  # fmt: skip
    sent: list[Sent] = []
    timeouts = 0
    try:
        for module_id, tenant, source_uri, checksum in targets:
            await asyncio.sleep(rng.uniform(0, MAX_EVENT_GAP_S))
            event = Envelope.wrap(SourceChangedV1(tenant_id=tenant, source_uri=source_uri, checksum=_h(checksum)))
            body = event.model_dump_json().encode()
            started = time.perf_counter()
            await js.publish(event.subject, body, headers={"Nats-Msg-Id": event.event_id})
            received = await _await_invalidated(sub, event.event_id, started + EVENT_TIMEOUT_S)
            if received is None:
                timeouts += 1
            else:
                sent.append(Sent(event_id=event.event_id, module_id=module_id, occurred_at=event.occurred_at,
                                 latency_s=received - started, received_at=datetime.now(UTC)))  # fmt: skip
            advance(1)
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer("cag", durable)
        await client.close()
    if not sent:
        raise RuntimeError("no cag.module.invalidated event arrived: is the registry consuming cag.invalidate.*?")
    changed_at, published_at = _db_times(libpq_url, sent)
    return PropagationResults(
        total=Latency.of([s.latency_s for s in sent]),
        event_to_db=Latency.of([(changed_at[s.module_id] - s.occurred_at).total_seconds() for s in sent]),
        db_to_received=Latency.of([(s.received_at - changed_at[s.module_id]).total_seconds() for s in sent]),
        db_to_relay_published=Latency.of(
            [
                (published_at[s.event_id] - changed_at[s.module_id]).total_seconds()
                for s in sent
                if s.event_id in published_at
            ]
        ),
        timeouts=timeouts,
    )


async def _await_invalidated(sub: Any, event_id: str, deadline: float) -> float | None:
    """The perf_counter time the module event caused by `event_id` arrived, or None at the deadline."""
    while (remaining := deadline - time.perf_counter()) > 0:
        try:
            msgs = await sub.fetch(1, timeout=remaining)
        except TimeoutError:  # nats' own timeout error subclasses it
            return None
        for msg in msgs:
            arrived = time.perf_counter()
            await msg.ack()
            data = json.loads(msg.data)["data"]
            if data.get("trigger_event_id") == event_id:
                return arrived
    return None


def _db_times(libpq_url: str, sent: Sequence[Sent]) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """Each module's state_changed_at, and each trigger's outbox published_at (same clock as here).

    The relay marks rows published after JetStream acked them, so the last ones may be marked a moment
    after their event was received: this waits (briefly) until every row is marked."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        changed = conn.execute(
            "SELECT module_id, state_changed_at FROM modules WHERE module_id = ANY(%s)", ([s.module_id for s in sent],)
        ).fetchall()
        while True:
            published = conn.execute(
                "SELECT envelope->'data'->>'trigger_event_id', published_at FROM outbox"
                " WHERE envelope->'data'->>'trigger_event_id' = ANY(%s) AND published_at IS NOT NULL",
                ([s.event_id for s in sent],),
            ).fetchall()
            if len(published) >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    return dict(changed), dict(published)


# ---------------------------------------------------------------- the run


def evaluate_targets(resolve: ResolveResults, propagation: PropagationResults) -> list[Target]:
    return [
        Target(name="ResolveRoute p99 (ms, sequential)", value=resolve.sequential.p99_ms, comparison="<=",
               threshold=RESOLVE_P99_MS, passed=resolve.sequential.p99_ms <= RESOLVE_P99_MS),
        Target(name="invalidation propagation p99 (ms)", value=propagation.total.p99_ms, comparison="<=",
               threshold=PROPAGATION_P99_MS,
               passed=propagation.total.p99_ms <= PROPAGATION_P99_MS and propagation.timeouts == 0),
    ]  # fmt: skip


def total_steps(config: BenchConfig) -> int:
    per_client = max(1, config.calls // config.concurrency)
    return config.modules + WARMUP_CALLS + config.calls + per_client * config.concurrency + config.events


def run_benchmark(config: BenchConfig, endpoints: Endpoints, tick: Callable[[str, int], None]) -> RegistryReport:
    load_before = os.getloadavg()
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    tick("generating the population", 0)
    pop = generate_population(config)
    with servers(endpoints) as srv:
        tick("migrating", 0)
        migrate.upgrade(srv.database.sync_url)
        tick("loading modules", 0)
        load_s, analyze_s = load_population(srv.database.libpq_url, pop, lambda n: tick("loading modules", n))
        report_parts = asyncio.run(_measure(config, srv, pop, tick))
    resolve, propagation, outbox_poll_s = report_parts
    population = PopulationStats(
        modules=len(pop.rows), routes=len(pop.routes), tenants=config.tenants, layouts=len(LAYOUTS),
        states=dict(pop.states), chain_depths={str(d): n for d, n in sorted(pop.depths.items())},
        load_s=load_s, analyze_s=analyze_s,
    )  # fmt: skip
    from cag.registry.handlers import PULL_SUB

    return RegistryReport(
        created_at=created_at,
        machine=MachineInfo(python_version=platform.python_version(), platform=platform.platform(),
                            cpu_count=os.cpu_count(), postgres_version=srv.postgres_version,
                            infrastructure=srv.infrastructure, load_average_before=load_before,
                            load_average_after=os.getloadavg()),
        parameters=Parameters(modules=config.modules, tenants=config.tenants,
                              routes_per_tenant=config.routes_per_tenant, calls=config.calls,
                              warmup_calls=WARMUP_CALLS, concurrent_clients=config.concurrency, events=config.events,
                              seed=config.seed, outbox_poll_s=outbox_poll_s,
                              registry_pull=f"batch_size={PULL_SUB.batch_size}, timeout={PULL_SUB.timeout}s"),
        population=population,
        resolve_route=resolve,
        propagation=propagation,
        targets=evaluate_targets(resolve, propagation),
    )  # fmt: skip


async def _measure(
    config: BenchConfig, srv: Servers, pop: Population, tick: Callable[[str, int], None]
) -> tuple[ResolveResults, PropagationResults, float]:
    tick("starting the registry", 0)
    async with running_registry(srv.database.async_url, srv.nats_url) as (address, settings, token):
        resolve = await measure_resolve(address, token, pop, config, lambda n: tick("ResolveRoute", n))
        propagation = await measure_propagation(
            srv.nats_url, srv.database.libpq_url, pop, config, lambda n: tick("invalidation events", n)
        )
        return resolve, propagation, float(settings.outbox_poll_s)


# ---------------------------------------------------------------- command line


def register(sub: Any) -> None:
    p = sub.add_parser("registry", help="registry at scale: ResolveRoute latency and invalidation propagation")
    p.add_argument("--modules", type=positive_int, default=100_000, help="modules loaded (default 100000)")
    p.add_argument("--calls", type=positive_int, default=2000, help="timed ResolveRoute calls (default 2000)")
    p.add_argument("--events", type=positive_int, default=200, help="invalidation events timed (default 200)")
    p.add_argument("--concurrency", type=positive_int, default=CONCURRENT_CLIENTS,
                   help=f"clients of the concurrent ResolveRoute run (default {CONCURRENT_CLIENTS})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of a table")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the JSON report goes (default {DEFAULT_OUT})")
    p.add_argument("--database-url",
                   help="a Postgres server to use (default CAG_DATABASE_URL; embedded when unset)")  # fmt: skip
    p.add_argument("--nats-url",
                   help="a NATS server to use (default CAG_NATS_URL; embedded when unset)")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    config = BenchConfig(modules=args.modules, calls=args.calls, events=args.events, concurrency=args.concurrency)
    given = settings.infra_given  # CagSettings defaults the NATS URL; the benchmark embeds one instead
    endpoints = Endpoints(
        database_url=args.database_url or settings.infra.database_url,
        nats_url=args.nats_url or (settings.infra.nats_url if "nats_url" in given else None),
    )
    stderr = Console(stderr=True)
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        task = progress.add_task("starting", total=total_steps(config))
        report = run_benchmark(config, endpoints, lambda d, n: progress.update(task, advance=n, description=d))
    emit_report(
        report.to_json(), args.out, as_json=args.json, render=lambda c: render(report, c), width=140, stderr=stderr
    )
    return 0 if report.passed else 1


# ---------------------------------------------------------------- rendering


def _row(name: str, lat: Latency, extra: str = "") -> list[str]:
    return [name, str(lat.count), f"{lat.p50_ms:.2f}", f"{lat.p90_ms:.2f}", f"{lat.p99_ms:.2f}",
            f"{lat.max_ms:.2f}", extra]  # fmt: skip


def results_table(report: RegistryReport) -> Table:
    pop, r, p = report.population, report.resolve_route, report.propagation
    table = Table(title=f"registry at {pop.modules:,} modules, {pop.routes:,} routes, {pop.tenants} tenants (ms)")
    for name in ("measurement", "n", "p50", "p90", "p99", "max"):
        table.add_column(name, justify="right" if name != "measurement" else "left")
    table.add_column("notes")
    table.add_row(*_row("ResolveRoute, 1 client", r.sequential, f"chain {r.chain_length_mean:.2f} modules"))
    table.add_row(*_row(f"ResolveRoute, {r.concurrent_clients} clients", r.concurrent,
                        f"{r.concurrent_throughput_rps:,.0f} req/s"))  # fmt: skip
    table.add_row(*_row("propagation, total", p.total, f"{p.timeouts} timeouts"))
    table.add_row(*_row("  event → DB change", p.event_to_db, "occurred_at → state_changed_at"))
    table.add_row(*_row("  DB change → received", p.db_to_received))
    table.add_row(*_row("  DB change → relay published", p.db_to_relay_published, "outbox published_at"))
    return table


def targets_table(report: RegistryReport) -> Table:
    table = Table(title="targets")
    for name in ("target", "value", "required", "result"):
        table.add_column(name)
    for t in report.targets:
        mark = "[green]pass[/green]" if t.passed else "[red]FAIL[/red]"
        table.add_row(t.name, f"{t.value:.2f}", f"{t.comparison} {t.threshold:g}", mark)
    return table


def render(report: RegistryReport, console: Console) -> None:
    console.print(results_table(report))
    console.print(targets_table(report))
    m, pop = report.machine, report.population
    load = ", ".join(f"{x:.2f}" for x in m.load_average_before)
    console.print(f"[dim]loaded in {pop.load_s:.1f}s (+ analyze {pop.analyze_s:.1f}s); Postgres {m.postgres_version},"
                  f" {m.infrastructure}; {m.cpu_count} CPUs, load {load}[/dim]")  # fmt: skip
