"""`cag bench e2e`: the serving path end to end — client → router → cache pool — against the engine in-process.

One run, SmolLM2 fp32 on this machine:

* Overhead: TTFT of a question on a module resident in the cache pool's engine (~4k tokens), measured by a
  client through the SDK, router and cache pool (each its own process, `cag platform`), against the TTFT of
  the same query on the same module resident in an engine in this process. `overhead_ms` holds the
  difference of their medians and of their 99th percentiles.
* Restore tax (~8k tokens, in-process): a request on an engine-resident module over the same query appended
  to one contiguous cache that already holds the rows (cag.bench.restore_tax).
* Routing decision (in-process): the router core's order of decision and ACL over a rule set of a few hundred
  rules, per decision.
* Concurrency: 1, 4 and 16 clients at once, on one shared module and on distinct modules: client TTFT
  percentiles and answers per second.
* Invalidation: from the registry's Invalidate call returning to the module gone from the cache pool (Stats).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cag.acl import AclScope
from cag.auth.caller import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, issue_user_token, load_key
from cag.bench import ttft
from cag.bench.output import emit_report
from cag.bench.restore_tax import RestoreTax, measure_restore_tax
from cag.cli.platform_runner import Platform, inherited_env
from cag.client import CagClient, Sampling, Summary
from cag.compiler.pipeline import compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.engine import GenerateRequest, SamplingParams, load_engine
from cag.engine.torch_engine import TorchEngine
from cag.infra.stack import InfraStack
from cag.kvmodule import ModuleFile
from cag.layout import PromptLayout, parse_layout
from cag.models import SMOLLM2, resolve_model
from cag.router.core.chains import ModuleLink, Principal, RouteEntry, RouteStatus
from cag.router.core.hints import hints_of
from cag.router.core.router import Ask, Router
from cag.router.core.rules import RouteInfo, RouteRule, RuleSet
from cag.rpc.clients import CachePoolClient, RegistryClient
from cag.rpc.modules import module_message
from cag.settings import CagSettings
from cag.v1 import registry_pb2

DEFAULT_OUT = Path("benchmarks/results/e2e.json")
TENANT = "bench"
QUERY = "Which status code does the API return when a client exceeds the rate limit?"
SHARED_TOKENS = 4096
TAX_TOKENS = 7600  # with the layout and the query reserve, the most SmolLM2 (8,192) takes
DISTINCT_TOKENS = 512
CLIENTS = (1, 4, 16)
LAYOUT = Path("examples/layouts/support_agent.v1.json")
FIRST_TOKEN = Sampling(max_new_tokens=1)
SHORT_ANSWER = Sampling(max_new_tokens=8)
TOKEN_TTL_S = 4 * 3600.0
DROP_POLL_S = 0.002


@dataclass(frozen=True, kw_only=True)
class Quantiles:
    p50: float
    p99: float
    mean: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Quantiles:
        ordered = sorted(samples)
        # The nearest-rank 99th percentile: with fewer than 100 samples it is the largest.
        p99 = ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]
        return cls(p50=statistics.median(ordered), p99=p99, mean=statistics.fmean(ordered), n=len(ordered))


@dataclass(frozen=True, kw_only=True)
class Breakdown:
    pool_ttft_ms: Quantiles  # from the request's arrival at the cache pool to its first token
    engine_prefill_ms: Quantiles  # the engine's forward pass of the query, to the first logits


@dataclass(frozen=True, kw_only=True)
class ConcurrencyRow:
    clients: int
    workload: str  # "shared": every client on one module; "distinct": one module per client
    ttft_ms: Quantiles
    answers_per_s: float


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    value: float
    comparison: str
    threshold: float
    passed: bool


@dataclass(frozen=True, kw_only=True)
class E2eReport:
    created_at: str
    machine: ttft.MachineInfo
    model: str
    module_tokens: int
    in_process_ttft_ms: Quantiles
    router_ttft_ms: Quantiles
    breakdown: Breakdown  # where the router path's time goes, from the answers' own records
    overhead_ms: dict[str, float]  # p50, p99: router minus in-process
    restore_tax: RestoreTax
    routing_decision_ms: Quantiles
    concurrency: list[ConcurrencyRow]
    event_to_drop_ms: Quantiles
    targets: list[Target]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---------------------------------------------------------------- modules


# Only modules whose golden questions passed can be published; the benchmark's text is arbitrary, so its one
# question asks for the weakest thing an answer shows: the letter "e".
GOLDEN = [{"question": "What is this document about?", "expect": ["e"]}]


def write_source(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.md").write_text(f"---\ntitle: {folder.name}\nsection: notes\norder: 1\n---\n{text}\n")
    (folder / "golden.json").write_text(json.dumps(GOLDEN))
    return folder


def source_text(tokenizer: Any, words: Sequence[int], tokens: int, offset: int) -> str:
    """`tokens` tokens' worth of the example knowledge, starting at token `offset` (distinct text per offset)."""
    return str(tokenizer.decode(words[offset : offset + tokens]))


@dataclass(frozen=True)
class Compiled:
    route: str
    path: Path
    message: Any  # cag.v1 Module


def compile_route(
    engine: TorchEngine, settings: CagSettings, workdir: Path, route: str, text: str, model: str
) -> Compiled:
    source = write_source(workdir / "knowledge" / route, text)
    request = CompileRequest(
        model=model, tokenizer=None, source=source, layout=LAYOUT, acl=AclSpec.parse(f"tenant:{TENANT}:{route}"),
        out=workdir / "modules", parents=(),
    )  # fmt: skip
    result = compile_module(request, models_dir=settings.models_dir, engine=engine)
    assert result.path is not None
    message = module_message(
        result.metadata,
        source_uri=source.resolve().as_uri(),
        storage_uri=result.path.resolve().as_uri(),
        header_sha256=result.header_sha256,
    )
    return Compiled(route=route, path=result.path, message=message)


# ---------------------------------------------------------------- in-process measurements


def in_process_ttft(engine: TorchEngine, module: Compiled, reps: int) -> tuple[Quantiles, list[int]]:
    opened = ModuleFile.open(module.path)
    prompt = PromptLayout(parse_layout(opened.metadata.layout), _tokenizer(engine))
    suffix = prompt.suffix_tokens(QUERY)
    engine.load([opened])
    samples = []
    for _ in range(reps + 1):
        began = time.perf_counter()
        next(engine.generate(GenerateRequest(chain=[opened], suffix=suffix, sampling=SamplingParams(max_new_tokens=1))))
        samples.append((time.perf_counter() - began) * 1e3)
    return Quantiles.of(samples[1:]), suffix  # the first pass is a warm-up


def _tokenizer(engine: TorchEngine) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(engine.model_files.tokenizer_path))


def routing_decisions(count: int, rules_per_set: int = 300) -> Quantiles:
    """The router core's decision (order of decision + ACL) on a rule set of `rules_per_set` rules."""
    rng = random.Random(7)
    routes = [f"route-{i}" for i in range(rules_per_set // 3)]
    rules = [
        RouteRule(rule_id=f"m-{i}", route=rng.choice(routes), metadata={"intent": f"intent-{i}"})
        for i in range(rules_per_set // 2)
    ] + [
        RouteRule(rule_id=f"k-{i}", route=rng.choice(routes), keywords=(f"word{i}", f"phrase {i} here"))
        for i in range(rules_per_set - rules_per_set // 2)
    ]
    rule_set = RuleSet(TENANT, 1, rules, [RouteInfo(route=r, description="") for r in routes])
    link = ModuleLink(module_id="m", version=1, acl_scope=AclScope.TENANT, tenant_id=TENANT, acl_principal="")
    entries = {r: RouteEntry(tenant_id=TENANT, route=r, status=RouteStatus.SERVABLE, chain=(link,)) for r in routes}
    router = Router()
    principal = Principal(tenant_id=TENANT, user="u")
    asks = [
        Ask(
            tenant_id=TENANT,
            query=f"how do I use word{rng.randrange(rules_per_set)} with the api?",
            hints=hints_of({"intent": f"intent-{rng.randrange(rules_per_set)}"} if i % 2 else {}),
            principal=principal,
        )
        for i in range(count)
    ]
    samples = []
    for ask in asks:
        began = time.perf_counter()
        choice = router.choose(ask, rule_set)
        router.settle(ask, choice, rule_set, entries.get(choice.route))
        samples.append((time.perf_counter() - began) * 1e3)
    return Quantiles.of(samples)


# ---------------------------------------------------------------- through the platform


def client_ttft(cag: CagClient, route: str, sampling: Sampling) -> float:
    return timed_answer(cag, route, sampling)[0]


def timed_answer(cag: CagClient, route: str, sampling: Sampling) -> tuple[float, Summary]:
    """Milliseconds from the call to the first token's chunk, as the client sees it, and the answer's record (the
    cache pool's own TTFT and the engine's prefill in it); the answer is drained."""
    began = time.perf_counter()
    first = None
    with cag.stream(QUERY, route=route, sampling=sampling) as chunks:
        for _ in chunks:
            if first is None:
                first = time.perf_counter()
        summary = chunks.answer.summary
    assert first is not None, "the answer had no token"
    return (first - began) * 1e3, summary


def concurrency(
    address: str, token: str, clients: int, routes: Sequence[str], per_client: int, workload: str
) -> ConcurrencyRow:
    barrier = threading.Barrier(clients)

    def one(i: int) -> list[float]:
        with CagClient(address, token, timeout_s=300.0) as cag:
            barrier.wait()
            return [client_ttft(cag, routes[i % len(routes)], SHORT_ANSWER) for _ in range(per_client)]

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        samples = [s for result in pool.map(one, range(clients)) for s in result]
    elapsed = time.perf_counter() - began
    return ConcurrencyRow(
        clients=clients,
        workload=workload,
        ttft_ms=Quantiles.of(samples),
        answers_per_s=len(samples) / elapsed,
    )


def event_to_drop(registry: RegistryClient, pool: CachePoolClient, module_ids: Sequence[str]) -> Quantiles:
    """Invalidate each (resident) module and time until the cache pool no longer holds it."""
    samples = []
    for module_id in module_ids:
        assert module_id in {m.module_id for m in pool.stats().modules}, f"{module_id} is not resident"
        trigger = registry_pb2.InvalidateRequest(module=registry_pb2.ModuleTrigger(module_id=module_id), reason="bench")
        began = time.perf_counter()
        registry.invalidate(trigger)
        while module_id in {m.module_id for m in pool.stats().modules}:
            if time.perf_counter() - began > 30:
                raise TimeoutError(f"{module_id} still in the cache pool 30 s after its invalidation")
            time.sleep(DROP_POLL_S)
        samples.append((time.perf_counter() - began) * 1e3)
    return Quantiles.of(samples)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.1)


def serves(cag: CagClient, route: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return cag.explain(QUERY, route=route).path == "module"
        except Exception:  # not caught up yet
            return False

    return check


# ---------------------------------------------------------------- the run


def run_benchmark(args: argparse.Namespace, settings: CagSettings, tick: Callable[[str], None]) -> E2eReport:
    load_before = os.getloadavg()
    model = resolve_model(args.model, settings.models_dir)
    engine = load_engine("torch", model, "fp32", kv_capacity=3 * TAX_TOKENS)
    assert isinstance(engine, TorchEngine)
    tokenizer = _tokenizer(engine)
    words = ttft.module_token_ids(
        tokenizer,
        "\n\n".join(f.read_text() for f in ttft.knowledge_files()),
        TAX_TOKENS + args.clients_max * DISTINCT_TOKENS,
    )
    with tempfile.TemporaryDirectory(prefix="cag-bench-e2e-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o711)  # the embedded Postgres runs as its own user and must reach its data below
        shared = compile_route(engine, settings, workdir, "shared-4k", source_text(tokenizer, words, SHARED_TOKENS, 0),
                               args.model)  # fmt: skip
        tick("compiled the shared module")
        tax = compile_route(engine, settings, workdir, "tax-8k", source_text(tokenizer, words, TAX_TOKENS, 0),
                            args.model)  # fmt: skip
        restore = measure_restore_tax(engine, tax.path, _suffix(engine, tax), args.reps, tick)
        engine.evict()
        distinct = [
            compile_route(engine, settings, workdir, f"d{i}",
                          source_text(tokenizer, words, DISTINCT_TOKENS, TAX_TOKENS + i * DISTINCT_TOKENS), args.model)
            for i in range(args.clients_max)
        ]  # fmt: skip
        tick("compiled the distinct modules")
        local, _ = in_process_ttft(engine, shared, args.reps)
        module_tokens = ModuleFile.open(shared.path).token_count
        engine.evict()
        decisions = routing_decisions(10_000)
        tick("timed routing decisions")
        del engine
        results = through_platform(args, settings, workdir, shared, distinct, tick)
    router_ttft, split, rows, drops = results
    overhead = {"p50": router_ttft.p50 - local.p50, "p99": router_ttft.p99 - local.p99}
    targets = [
        _target("overhead_p50_ms", overhead["p50"], "<=", 10.0),
        _target("overhead_p99_ms", overhead["p99"], "<=", 25.0),
        _target("restore_tax_8k", restore.ratio, "<=", 1.05),
        _target("routing_decision_p99_ms", decisions.p99, "<=", 1.0),
        _target("event_to_drop_p99_ms", drops.p99, "<=", 200.0),
    ]
    return E2eReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=ttft.MachineInfo.current(load_before),
        model=args.model,
        module_tokens=module_tokens,
        in_process_ttft_ms=local,
        router_ttft_ms=router_ttft,
        breakdown=split,
        overhead_ms=overhead,
        restore_tax=restore,
        routing_decision_ms=decisions,
        concurrency=rows,
        event_to_drop_ms=drops,
        targets=targets,
    )


def _suffix(engine: TorchEngine, module: Compiled) -> list[int]:
    opened = ModuleFile.open(module.path)
    return PromptLayout(parse_layout(opened.metadata.layout), _tokenizer(engine)).suffix_tokens(QUERY)


def _target(name: str, value: float, comparison: str, threshold: float) -> Target:
    passed = value <= threshold if comparison == "<=" else value >= threshold
    return Target(name=name, value=value, comparison=comparison, threshold=threshold, passed=passed)


def through_platform(
    args: argparse.Namespace,
    settings: CagSettings,
    workdir: Path,
    shared: Compiled,
    distinct: list[Compiled],
    tick: Callable[[str], None],
) -> tuple[Quantiles, Breakdown, list[ConcurrencyRow], Quantiles]:
    clients = str(max(CLIENTS))
    runner = Platform(
        workdir / "run",
        settings.home,
        model=args.model,
        base_env=inherited_env(),
        service_env={"cachepool": {"CAG_CACHEPOOL_MAX_RUNNING": clients, "CAG_CACHEPOOL_LOAD_THREADS": clients}},
    )
    plan = runner.up()
    tick("platform up")
    try:
        state = InfraStack(runner.run_dir).load_state()
        assert state is not None
        key = load_key(Path(state.auth_key_file))
        admin = issue_token(key, "user:bench", [Scope.ADMIN], [ALL_TENANTS], TOKEN_TTL_S)
        user = issue_user_token(key, TENANT, TOKEN_TTL_S, user="bench")
        with (
            RegistryClient(plan.address_of("registry"), token=admin) as registry,
            CachePoolClient(plan.address_of("cachepool"), token=admin) as pool,
            CagClient(plan.address_of("router"), user, timeout_s=300.0) as cag,
        ):
            for module in (shared, *distinct):
                registry.register(module.message)
                registry.publish(module.message.module_id)
            for module in (shared, *distinct):
                wait_until(serves(cag, module.route), f"the router to serve {module.route}")
                client_ttft(cag, module.route, FIRST_TOKEN)  # loads it: every measurement below is on resident rows
            tick("published and loaded")
            timed = [timed_answer(cag, shared.route, FIRST_TOKEN) for _ in range(args.reps)]
            tick("timed TTFT through the router")
            rows = []
            for n in CLIENTS:
                router = plan.address_of("router")
                rows.append(concurrency(router, user, n, [shared.route], args.per_client, "shared"))
                rows.append(concurrency(router, user, n, [d.route for d in distinct[:n]], args.per_client, "distinct"))
                tick(f"{n} concurrent clients")
            drops = event_to_drop(registry, pool, [d.message.module_id for d in distinct])
            tick("timed invalidation drops")
    finally:
        runner.down(purge=True)
    split = Breakdown(
        pool_ttft_ms=Quantiles.of([summary.ttft_ms for _, summary in timed]),
        engine_prefill_ms=Quantiles.of([summary.prefill_ms for _, summary in timed]),
    )
    return Quantiles.of([ms for ms, _ in timed]), split, rows, drops


# ---------------------------------------------------------------- command line


def register(sub: Any) -> None:
    p = sub.add_parser("e2e", help="client → router → cache pool vs the engine in-process; concurrency; invalidation")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of tables")
    p.add_argument("--reps", type=int, default=20, help="repetitions of each TTFT measurement (default 20)")
    p.add_argument("--per-client", type=int, default=3, help="questions per client in the concurrency runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON report (default {DEFAULT_OUT})")
    p.add_argument("--model", default=SMOLLM2, help=f"catalog name of the model (default {SMOLLM2})")
    p.set_defaults(run=run, clients_max=max(CLIENTS))


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    torch.set_num_threads(settings.num_threads or 2)
    stderr = Console(stderr=True)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        task = progress.add_task("loading", total=None)
        report = run_benchmark(args, settings, lambda d: progress.update(task, description=d))
    emit_report(report.to_json(), args.out, as_json=args.json, render=lambda c: render(report, c), width=140,
                stderr=stderr)  # fmt: skip
    return 0


def render(report: E2eReport, console: Console) -> None:
    head = Table(title=f"serving path, {report.model} fp32, module of {report.module_tokens:,} tokens (ms)")
    for column in ("measure", "p50", "p99", "n"):
        head.add_column(column, justify="right" if column != "measure" else "left")
    for name, q in (
        ("TTFT in-process (resident module)", report.in_process_ttft_ms),
        ("TTFT client → router → cache pool", report.router_ttft_ms),
        ("  of which: cache pool, arrival → first token", report.breakdown.pool_ttft_ms),
        ("  of which: engine prefill of the query", report.breakdown.engine_prefill_ms),
        ("routing decision (in-process)", report.routing_decision_ms),
        ("invalidation event → dropped from the pool", report.event_to_drop_ms),
    ):
        head.add_row(name, f"{q.p50:.2f}", f"{q.p99:.2f}", str(q.n))
    head.add_row("overhead (router − in-process)", f"{report.overhead_ms['p50']:.2f}",
                 f"{report.overhead_ms['p99']:.2f}", "")  # fmt: skip
    console.print(head)
    load = Table(title="concurrent clients (TTFT ms, answers of 8 tokens per second)")
    for column in ("clients", "workload", "p50", "p99", "answers/s"):
        load.add_column(column)
    for row in report.concurrency:
        load.add_row(str(row.clients), row.workload, f"{row.ttft_ms.p50:.0f}", f"{row.ttft_ms.p99:.0f}",
                     f"{row.answers_per_s:.2f}")  # fmt: skip
    console.print(load)
    tax = report.restore_tax
    console.print(f"restore tax at {tax.module_tokens:,} tokens: {tax.resident_ttft_ms:.1f} ms resident / "
                  f"{tax.contiguous_ttft_ms:.1f} ms contiguous = {tax.ratio:.3f}")  # fmt: skip
    targets = Table(title="targets")
    for column in ("target", "value", "required", "result"):
        targets.add_column(column)
    for t in report.targets:
        targets.add_row(t.name, f"{t.value:.3f}", f"{t.comparison} {t.threshold:g}", "pass" if t.passed else "FAIL")
    console.print(targets)
