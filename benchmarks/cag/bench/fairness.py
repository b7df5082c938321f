"""`cag bench fairness`: a modest tenant's wait for an engine slot and time to first token, alone and while
another tenant floods the cache pool, under first come first served and fair queueing, in one run.

A scheduling benchmark: every request goes through the cache pool's own scheduler (cag.cachepool.scheduler
and its core, cag.cachepool.core.admission), but the engine is a stand-in that holds the slot for fixed
durations with asyncio sleeps, no model loaded: the first token `FIRST_TOKEN_S` after the slot is granted,
the slot freed `HOLD_S` after it, the torch engine's measured figures (benchmarks/results/e2e.json: one
client, 8-token answers on a 512-token module, TTFT 158 ms, 1.62 answers/s). What is measured is queueing.

Tenant B sends one request at a time, about one a second (±20 %, seeded); tenant A floods with clients that
each send their next request as soon as the last is answered (or after the pool's retry hint when refused).
For each policy B runs alone (quiet), then while A floods; the ratio of B's p99 TTFT flooded over quiet is the
fairness target (<= 2 for fair). B's wait alone is a few microseconds, so its ratio is reported but noisy.

Policies: fifo, the queue before fair scheduling (every request in one lane, no tenant share, no reserved
slot); turns_only, deficit round robin and the tenant share without a reserved slot; fair, the pool's defaults
(CachePoolSettings' tenant_queue_share and reserved_slots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cag.bench.arguments import positive_int
from cag.bench.output import emit_report
from cag.cachepool.core.admission import QueueLimits
from cag.cachepool.scheduler import Scheduler
from cag.cachepool.settings import CachePoolSettings
from cag.errors import OverloadedError
from cag.settings import CagSettings

Tick = Callable[[str], None]

DEFAULT_OUT = Path("benchmarks/results/fairness.json")
FIRST_TOKEN_S = 0.158  # e2e.json: concurrency, 1 client, distinct modules, TTFT p50
HOLD_S = 0.617  # 1 / 1.62 answers/s of that client: the slot held per answer
B_EVERY_S = 1.0
B_JITTER = 0.2
FLOOD_WARMUP_S = 2.0  # the flood fills the queue before B's first request
SEED = 7
TARGET_RATIO = 2.0


# ---------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class Quantiles:
    """Milliseconds; p99 by nearest rank."""

    p50: float
    p99: float
    n: int

    @classmethod
    def of(cls, samples_s: Sequence[float]) -> Quantiles:
        ordered = sorted(s * 1e3 for s in samples_s)
        if not ordered:
            return cls(p50=math.nan, p99=math.nan, n=0)
        p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
        return cls(p50=statistics.median(ordered), p99=p99, n=len(ordered))


@dataclass(frozen=True, kw_only=True)
class Phase:
    wait_ms: Quantiles  # B's wait for a slot
    ttft_ms: Quantiles  # B's arrival to first token
    refused: int  # B's requests refused (RESOURCE_EXHAUSTED)
    flood_answers_per_s: float  # A's answers per second while B ran (0 when quiet)
    flood_refused: int


@dataclass(kw_only=True)
class PolicyRow:
    policy: str
    tenant_blind: bool  # every request in one lane: first come, first served
    limits: dict[str, Any]
    quiet: Phase
    flood: Phase
    ttft_p99_ratio: float = field(init=False)  # flood / quiet
    wait_p99_ratio: float = field(init=False)

    def __post_init__(self) -> None:
        self.ttft_p99_ratio = self.flood.ttft_ms.p99 / self.quiet.ttft_ms.p99
        self.wait_p99_ratio = self.flood.wait_ms.p99 / max(self.quiet.wait_ms.p99, 1e-6)


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    value: float
    comparison: str
    threshold: float
    passed: bool


@dataclass(frozen=True, kw_only=True)
class Parameters:
    engine: str
    first_token_s: float
    hold_s: float
    b_requests: int
    b_every_s: float
    b_jitter: float
    flood_clients: int
    flood_warmup_s: float
    max_running: int
    max_queued: int
    scale: float
    seed: int


@dataclass(frozen=True, kw_only=True)
class MachineInfo:
    python_version: str
    platform: str
    cpu_count: int | None
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class FairnessReport:
    created_at: str
    machine: MachineInfo
    parameters: Parameters
    rows: list[PolicyRow]
    targets: list[Target]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---------------------------------------------------------------- workload


@dataclass(frozen=True, kw_only=True)
class Policy:
    name: str
    limits: QueueLimits
    tenant_blind: bool

    def lane(self, tenant: str) -> str:
        return "" if self.tenant_blind else tenant


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    b_requests: int
    flood_clients: int
    max_running: int
    max_queued: int
    scale: float  # every duration multiplied by it

    def policies(self) -> list[Policy]:
        defaults = CachePoolSettings.model_fields
        share = float(defaults["tenant_queue_share"].default)
        reserved = int(defaults["reserved_slots"].default)
        size = {"max_running": self.max_running, "max_queued": self.max_queued}
        return [
            Policy(name="fifo", limits=QueueLimits(**size), tenant_blind=True),
            Policy(name="turns_only", limits=QueueLimits(**size, tenant_queue_share=share), tenant_blind=False),
            Policy(
                name="fair",
                limits=QueueLimits(**size, tenant_queue_share=share, reserved_slots=reserved),
                tenant_blind=False,
            ),
        ]

    @property
    def total_steps(self) -> int:
        return len(self.policies()) * 2 * self.b_requests


@dataclass
class _FloodCounts:
    answered: int = 0
    refused: int = 0


async def b_request(scheduler: Scheduler, lane: str, config: BenchConfig) -> tuple[float, float] | None:
    """One request of tenant B: (wait, ttft) in seconds, None when refused."""
    arrived = time.perf_counter()
    try:
        async with scheduler.slot(lane) as waited:
            await asyncio.sleep(FIRST_TOKEN_S * config.scale)
            ttft = time.perf_counter() - arrived
            await asyncio.sleep((HOLD_S - FIRST_TOKEN_S) * config.scale)
    except OverloadedError:
        return None
    return waited, ttft


async def flood_client(scheduler: Scheduler, lane: str, config: BenchConfig, counts: _FloodCounts) -> None:
    """Tenant A's client: the next request as soon as the last is answered; after the retry hint if refused."""
    while True:
        try:
            async with scheduler.slot(lane):
                await asyncio.sleep(HOLD_S * config.scale)
            counts.answered += 1
        except OverloadedError as refused:
            counts.refused += 1
            await asyncio.sleep(refused.retry_after_s)


async def run_phase(policy: Policy, config: BenchConfig, *, flood: bool, tick: Tick) -> Phase:
    scheduler, counts, rng = Scheduler(policy.limits), _FloodCounts(), random.Random(SEED)
    clients = config.flood_clients if flood else 0
    flooders = [asyncio.create_task(flood_client(scheduler, policy.lane("a"), config, counts)) for _ in range(clients)]
    label = f"{policy.name}: {'flood' if flood else 'quiet'}"
    try:
        if flood:
            await asyncio.sleep(FLOOD_WARMUP_S * config.scale)
        began, answered_before = time.perf_counter(), counts.answered
        sent = []
        for _ in range(config.b_requests):
            await asyncio.sleep(B_EVERY_S * config.scale * rng.uniform(1 - B_JITTER, 1 + B_JITTER))
            task = asyncio.create_task(b_request(scheduler, policy.lane("b"), config))
            task.add_done_callback(lambda _: tick(label))
            sent.append(task)
        outcomes = await asyncio.gather(*sent)
        flood_rate = (counts.answered - answered_before) / (time.perf_counter() - began)
    finally:
        for task in flooders:
            task.cancel()
        await asyncio.gather(*flooders, return_exceptions=True)
    answered = [o for o in outcomes if o is not None]
    return Phase(
        wait_ms=Quantiles.of([wait for wait, _ in answered]),
        ttft_ms=Quantiles.of([ttft for _, ttft in answered]),
        refused=len(outcomes) - len(answered),
        flood_answers_per_s=flood_rate if flood else 0.0,
        flood_refused=counts.refused,
    )


async def measure_policy(policy: Policy, config: BenchConfig, tick: Tick) -> PolicyRow:
    quiet = await run_phase(policy, config, flood=False, tick=tick)
    flooded = await run_phase(policy, config, flood=True, tick=tick)
    return PolicyRow(
        policy=policy.name, tenant_blind=policy.tenant_blind, limits=asdict(policy.limits), quiet=quiet, flood=flooded
    )


def run_benchmark(config: BenchConfig, tick: Tick) -> FairnessReport:
    """Every policy, quiet then flooded, in one process; no printing."""
    load_before = os.getloadavg()
    rows = [asyncio.run(measure_policy(policy, config, tick)) for policy in config.policies()]
    fair = next(r for r in rows if r.policy == "fair")
    ratio = fair.ttft_p99_ratio
    refused = fair.flood.refused
    targets = [
        Target(name="fair_ttft_p99_flood_over_quiet", value=ratio, comparison="<=", threshold=TARGET_RATIO,
               passed=ratio <= TARGET_RATIO),
        Target(name="fair_b_refused_while_flooded", value=refused, comparison="<=", threshold=0, passed=refused == 0),
    ]  # fmt: skip
    return FairnessReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=MachineInfo(
            python_version=platform.python_version(),
            platform=platform.platform(),
            cpu_count=os.cpu_count(),
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
        ),
        parameters=Parameters(
            engine="stand-in: asyncio sleeps of the torch engine's measured durations",
            first_token_s=FIRST_TOKEN_S * config.scale,
            hold_s=HOLD_S * config.scale,
            b_requests=config.b_requests,
            b_every_s=B_EVERY_S * config.scale,
            b_jitter=B_JITTER,
            flood_clients=config.flood_clients,
            flood_warmup_s=FLOOD_WARMUP_S * config.scale,
            max_running=config.max_running,
            max_queued=config.max_queued,
            scale=config.scale,
            seed=SEED,
        ),
        rows=rows,
        targets=targets,
    )


# ---------------------------------------------------------------- command line


def _scale(value: str) -> float:
    try:
        scale = float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number, not {value!r}") from e
    if not 0 < scale <= 10:
        raise argparse.ArgumentTypeError("the time scale must be in (0, 10]")
    return scale


def register(sub: Any) -> None:
    p = sub.add_parser("fairness", help="a modest tenant's p99 TTFT alone vs while another floods (fifo vs fair)")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of a table")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the JSON report is written ({DEFAULT_OUT})")
    p.add_argument("--b-requests", type=positive_int, default=100, help="tenant B's requests per phase (default 100)")
    p.add_argument("--flood-clients", type=positive_int, default=24, help="tenant A's concurrent clients (default 24)")
    p.add_argument("--max-running", type=positive_int, default=4, help="engine slots (default 4, the pool's)")
    p.add_argument("--max-queued", type=int, default=32, help="waiting room (default 32, the pool's)")
    p.add_argument("--scale", type=_scale, default=1.0, help="multiply every duration (default 1: the measured ones)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    config = BenchConfig(
        b_requests=args.b_requests,
        flood_clients=args.flood_clients,
        max_running=args.max_running,
        max_queued=args.max_queued,
        scale=args.scale,
    )
    stderr = Console(stderr=True)
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        task = progress.add_task("starting", total=config.total_steps)
        report = run_benchmark(config, lambda d: progress.update(task, advance=1, description=d))
    emit_report(
        report.to_json(), args.out, as_json=args.json, render=lambda c: render(report, c), width=140, stderr=stderr
    )
    return 0 if all(t.passed for t in report.targets) else 1


# ---------------------------------------------------------------- rendering


def _pair(q: Quantiles) -> str:
    return f"{q.p50:,.1f} / {q.p99:,.1f}"


def render(report: FairnessReport, console: Console) -> None:
    p = report.parameters
    title = (
        f"tenant B alone vs while A floods ({p.flood_clients} clients), {p.max_running} slots, {p.max_queued} queued;"
        f" stand-in engine: first token {p.first_token_s * 1e3:.0f} ms, slot {p.hold_s * 1e3:.0f} ms; ms, p50 / p99"
    )
    table = Table(title=title)
    columns = ("policy", "quiet wait", "flood wait", "quiet TTFT", "flood TTFT", "TTFT p99 ratio", "B refused",
               "A answers/s")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="right")
    for r in report.rows:
        table.add_row(
            r.policy, _pair(r.quiet.wait_ms), _pair(r.flood.wait_ms), _pair(r.quiet.ttft_ms), _pair(r.flood.ttft_ms),
            f"{r.ttft_p99_ratio:.2f}x", str(r.flood.refused), f"{r.flood.flood_answers_per_s:.2f}",
        )  # fmt: skip
    console.print(table)
    for t in report.targets:
        mark = "[green]pass[/green]" if t.passed else "[red]FAIL[/red]"
        console.print(f"{t.name}: {t.value:.3f} (required {t.comparison} {t.threshold:g}) {mark}")
