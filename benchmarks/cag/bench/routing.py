"""`cag bench routing`: how long the router core takes to decide, with many rules.

A tenant with `--rules` keyword rules (each a word and a three-word phrase) and a servable chain per route; each
query names one rule's phrase inside filler text, so the keyword index has to find it among the rest. Every
decision runs the core's whole order (metadata rules, keyword rules, no classifier, chain and ACL checks), in
this process, no transport. Several repetitions over the same queries; the JSON has each repetition's p50 and
p99 and their medians. Target (ARCHITECTURE: no search on the hot path): p99 under 1 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cag.acl import AclScope
from cag.bench.arguments import positive_int
from cag.bench.output import emit_report
from cag.router.core import (
    Ask,
    ModuleLink,
    Principal,
    RouteEntry,
    RouteInfo,
    Router,
    RouteRule,
    RouteStatus,
    RuleSet,
    hints_of,
)
from cag.settings import CagSettings

DEFAULT_OUT = Path("benchmarks/results/routing.json")
TENANT = "acme"
TARGET_P99_MS = 1.0


@dataclass(frozen=True, kw_only=True)
class Rep:
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, kw_only=True)
class RoutingReport:
    created_at: str
    parameters: dict[str, int]
    reps: list[Rep]
    p50_ms: float  # median over the repetitions
    p99_ms: float
    target_p99_ms: float
    passed: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def tenant_rules(count: int) -> tuple[RuleSet, dict[str, RouteEntry]]:
    rules = RuleSet(
        TENANT,
        1,
        rules=[
            RouteRule(rule_id=f"r{i}", route=f"route-{i}", keywords=(f"word{i}", f"phrase number {i}"))
            for i in range(count)
        ],
        routes=[RouteInfo(route=f"route-{i}") for i in range(count)],
    )
    entries = {
        f"route-{i}": RouteEntry(
            tenant_id=TENANT,
            route=f"route-{i}",
            status=RouteStatus.SERVABLE,
            chain=(
                ModuleLink(module_id=f"m{i}", version=1, acl_scope=AclScope.TENANT, tenant_id=TENANT, acl_principal=""),
            ),
            route_version=1,
        )
        for i in range(count)
    }
    return rules, entries


def decision_seconds(router: Router, ask: Ask, rules: RuleSet, entries: dict[str, RouteEntry]) -> float:
    started = time.perf_counter()
    choice = router.choose(ask, rules)
    decision = router.settle(ask, choice, rules, entries[choice.route])
    elapsed = time.perf_counter() - started
    if decision.route != choice.route or not decision.module_ids:
        raise AssertionError(f"the query for {choice.route} was not served by its chain")
    return elapsed


def run_benchmark(rule_count: int, queries: int, reps: int, tick: Any) -> RoutingReport:
    rules, entries = tenant_rules(rule_count)
    router = Router()
    principal = Principal(tenant_id=TENANT)
    asks = [
        Ask(
            tenant_id=TENANT,
            query=f"a question about phrase   number {i % rule_count} and more words " * 4,
            hints=hints_of({}),
            principal=principal,
        )
        for i in range(queries)
    ]
    for ask in asks:  # warm: the rule set's keyword index is built on first use
        decision_seconds(router, ask, rules, entries)
    results = []
    for _ in range(reps):
        samples = [decision_seconds(router, ask, rules, entries) for ask in asks]
        cuts = statistics.quantiles(samples, n=100)
        results.append(Rep(p50_ms=statistics.median(samples) * 1e3, p99_ms=cuts[98] * 1e3))
        tick()
    p99 = statistics.median(r.p99_ms for r in results)
    return RoutingReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parameters={"rules": rule_count, "queries": queries, "reps": reps},
        reps=results,
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=p99,
        target_p99_ms=TARGET_P99_MS,
        passed=p99 < TARGET_P99_MS,
    )


def register(sub: Any) -> None:
    p = sub.add_parser("routing", help="the router core's decision time with many keyword rules (p50/p99)")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of a table")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the JSON report is written ({DEFAULT_OUT})")
    p.add_argument("--rules", type=positive_int, default=200, help="keyword rules of the tenant (default 200)")
    p.add_argument("--queries", type=positive_int, default=1000, help="decisions per repetition (default 1000)")
    p.add_argument("--reps", type=positive_int, default=5, help="repetitions (default 5)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    stderr = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        task = progress.add_task("repetitions", total=args.reps)
        report = run_benchmark(args.rules, args.queries, args.reps, lambda: progress.update(task, advance=1))
    emit_report(
        report.to_json(), args.out, as_json=args.json, render=lambda c: render(report, c), width=100, stderr=stderr
    )
    return 0 if report.passed else 1


def render(report: RoutingReport, console: Console) -> None:
    p = report.parameters
    table = Table(title=f"router core decisions: {p['rules']} keyword rules, {p['queries']} queries per repetition")
    for name in ("repetition", "p50 ms", "p99 ms"):
        table.add_column(name, justify="right")
    for i, rep in enumerate(report.reps, 1):
        table.add_row(str(i), f"{rep.p50_ms:.3f}", f"{rep.p99_ms:.3f}")
    table.add_row("median", f"{report.p50_ms:.3f}", f"{report.p99_ms:.3f}")
    console.print(table)
    verdict = "met" if report.passed else "NOT met"
    console.print(f"target p99 < {report.target_p99_ms:g} ms: {verdict}")
