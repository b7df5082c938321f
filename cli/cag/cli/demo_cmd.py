"""`cag demo`: the main job end to end, through the platform's own services.

Starts the platform as processes (`cag platform up`: NATS, Postgres, registry, cache pool, router, compiler, fallback)
unless it runs already, compiles the demo knowledge — one public module with the shared guidelines and tools, and on top
of it acme's billing and shipping modules and globex's api module — registers and publishes them, and applies
each tenant's route rules. Then two end users (alice at acme, bob at globex) ask questions through the router
with the SDK; per answer it prints the path, the route and what decided it, the module versions with the tier
each came from, and the TTFT. Last, a live invalidation: a billing source is edited and its change published
as an event; the next billing answer takes the fallback path (no module is served stale: the fallback service
answers from retrieved chunks, named with their place in the source) until the compiler service, following the
registry's invalidation, has recompiled and published the module by itself, and then the new version answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cag.auth.caller import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, issue_user_token, load_key
from cag.canonical import load_source, source_checksum
from cag.cli.invalidate_cmd import publish
from cag.cli.platform_runner import Platform, PlatformPlan, inherited_env
from cag.cli.progress import RichCompileObserver
from cag.cli.routes_cmd import read_rules_file
from cag.client import Answer, CagClient, CagClientError, FallbackUnavailableError, Sampling
from cag.compiler.pipeline import compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.engine import Engine, load_engine
from cag.errors import UnavailableError
from cag.events.schemas import Envelope, SourceChangedV1
from cag.infra.nats_auth import OPS
from cag.infra.stack import InfraStack
from cag.models import SMOLLM2, resolve_model
from cag.rpc.clients import RegistryClient
from cag.rpc.modules import module_message
from cag.settings import CagSettings

PUBLIC_PARENT = "shared"
TENANTS = {"acme": ("billing", "shipping"), "globex": ("api",)}
USERS = {"acme": "alice", "globex": "bob"}
EDITED_ROUTE = ("acme", "billing")
EDIT = ("Refunds are accepted within 30 days of delivery.", "Refunds are accepted within 45 days of delivery.")
EDITED_QUESTION = "Within how many days of delivery are refunds accepted?"
TOKEN_TTL_S = 3600.0
# The router and the cache pool follow the registry's feed: how long the demo waits for them to catch up.
CATCH_UP_S = 60.0
# The compiler service loads its engine on its first job, then recompiles and checks the golden questions.
RECOMPILE_S = 300.0
SAMPLING = Sampling(max_new_tokens=40)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="compile, publish and ask the demo knowledge through the platform's services")
    p.add_argument("--examples", type=Path, default=Path("examples"))
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--model", default=SMOLLM2)
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Row:
    who: str
    question: str
    path: str
    route: str
    modules: str
    ttft_ms: float | None
    answer: str


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    console = Console()
    if not console.is_terminal:  # piped or logged: wide enough for the tables to stay readable
        console = Console(width=170)
    # A platform of its own, from empty databases, whatever else runs here: the demo edits and republishes its
    # knowledge, and a registry that remembers an earlier run's edits would refuse the first version again.
    runner = Platform((args.out / "run").absolute(), settings.home, model=args.model, base_env=inherited_env())
    runner.down(purge=True)  # what an interrupted run left
    try:
        with console.status(
            "starting the platform: NATS, Postgres, registry, cache pool, router, compiler, fallback (one process each)"
        ):
            plan = runner.up()
        for service in plan.services:
            console.print(f"[dim]• {service.name} serving on {service.address}[/dim]")
        return Demo(args, settings, plan, console, runner.infra).run()
    finally:
        with console.status("stopping the platform"):
            runner.down(purge=True)


class Demo:
    def __init__(
        self, args: argparse.Namespace, settings: CagSettings, plan: PlatformPlan, console: Console, infra: InfraStack
    ) -> None:
        self.args = args
        self.settings = settings
        self.plan = plan
        self.console = console
        self.state = infra.load_state()
        assert self.state is not None  # the platform is up
        self.key = load_key(Path(self.state.auth_key_file))
        # The demo is the platform's operator: it compiles and publishes for every tenant.
        self.operator = issue_token(self.key, "user:demo-operator", [Scope.ADMIN], [ALL_TENANTS], TOKEN_TTL_S)
        self.knowledge = args.out / "knowledge"
        self.engine: Engine | None = None

    def run(self) -> int:
        shutil.rmtree(self.knowledge, ignore_errors=True)
        shutil.copytree(self.args.examples / "knowledge", self.knowledge)  # the demo edits its own copy
        model = resolve_model(self.args.model, self.settings.models_dir)
        self.engine = load_engine(self.settings.engine, model, "fp32")
        with RegistryClient(self.plan.address_of("registry"), token=self.operator) as registry:
            parent = self.compile_and_publish(registry, PUBLIC_PARENT, "public", ())
            for tenant, routes in TENANTS.items():
                for route in routes:
                    self.compile_and_publish(registry, route, f"tenant:{tenant}:{route}", (parent,))
                tenant_id, rules, routes_info = read_rules_file(self.args.examples / "routes" / f"{tenant}.yaml")
                version = registry.put_route_rules(tenant_id, rules, routes_info, reason="demo").version
                self.console.print(f"[green]route rules[/green] {tenant} v{version}: {len(rules)} rules")
            rows = self.questions()
            title = f"answers through the router (SmolLM2-135M-Instruct on {self.settings.engine}, greedy)"
            self.console.print(table(title, rows))
            self.console.print(table("live invalidation of acme/billing", self.invalidation(registry)))
        return 0

    def compile_and_publish(self, registry: RegistryClient, name: str, acl: str, parents: tuple[Path, ...]) -> Path:
        request = CompileRequest(
            model=self.args.model, tokenizer=None, source=self.knowledge / name,
            layout=self.args.examples / "layouts" / "support_agent.v1.json", acl=AclSpec.parse(acl),
            out=self.args.out / "modules", parents=parents, engine=self.settings.engine,
        )  # fmt: skip
        self.console.rule(f"compile {name} ({acl})")
        with RichCompileObserver(self.console) as observer:
            result = compile_module(request, models_dir=self.settings.models_dir, engine=self.engine, observer=observer)
        assert result.path is not None
        record = module_message(
            result.metadata,
            source_uri=request.source.resolve().as_uri(),
            storage_uri=result.path.resolve().as_uri(),
            header_sha256=result.header_sha256,
        )
        registry.register(record)
        published = registry.publish(result.metadata.module_id)
        self.console.print(f"[green]published[/green] {published.module_id} as {published.tenant_id}/"
                           f"{published.route} v{published.version}")  # fmt: skip
        return result.path

    def client(self, tenant: str) -> CagClient:
        token = issue_user_token(self.key, tenant, TOKEN_TTL_S, user=USERS[tenant])
        return CagClient(self.plan.address_of("router"), token)

    def questions(self) -> list[Row]:
        rows = []
        for tenant, routes in TENANTS.items():
            with self.client(tenant) as cag:
                for route in routes:
                    cases = json.loads((self.knowledge / route / "golden.json").read_text())
                    question = str(cases[0]["question"])
                    wait_for(served(cag, question), f"the router to serve {route}")
                    # Asked twice: the first answer loads the module, the second finds it in the engine.
                    rows += [self.ask(cag, tenant, question) for _ in range(2)]
        # Another tenant's knowledge is never served: bob may not even ask in acme's name.
        with self.client("globex") as bob:
            rows.append(self.ask(bob, "globex", "How do refunds work?", in_name_of="acme"))
        return rows

    def ask(self, cag: CagClient, tenant: str, question: str, *, in_name_of: str | None = None) -> Row:
        """`tenant`'s user asks `question` (in the name of another tenant, when `in_name_of` says so)."""
        who = f"{USERS[tenant]}@{tenant}"
        try:
            answer = cag.ask(question, sampling=SAMPLING, tenant=in_name_of)
        except FallbackUnavailableError as e:
            return Row(who, question, "fallback", "-", "-", None, f"(the fallback service is unavailable: {e.message})")
        except CagClientError as e:
            return Row(who, question, f"refused: {e.code.name}", "-", "-", None, e.message)
        return answer_row(who, question, answer)

    def invalidation(self, registry: RegistryClient) -> list[Row]:
        tenant, route = EDITED_ROUTE
        source = self.knowledge / route
        policy = source / "refund-policy.md"
        policy.write_text(policy.read_text().replace(*EDIT))
        golden = source / "golden.json"
        golden.write_text(golden.read_text().replace('"30 days"', '"45 days"'))
        event = Envelope.wrap(
            SourceChangedV1(tenant_id=tenant, source_uri=source.resolve().as_uri(),
                            checksum=source_checksum(load_source(source)))
        )  # fmt: skip
        assert self.state is not None
        asyncio.run(publish(self.state.nats_url_for(OPS), event, timeout_s=10.0))
        self.console.print(f"[yellow]edited[/yellow] {policy.name}; published {event.subject} ({event.event_id})")
        rows = []
        with self.client(tenant) as cag:
            stale = cag.explain(EDITED_QUESTION).module_version
            wait_for(lambda: cag.explain(EDITED_QUESTION).path == "fallback", "the router to see the stale module")
            rows.append(self.ask(cag, tenant, EDITED_QUESTION))
            with self.console.status("the compiler service recompiles acme/billing (nobody runs a command)"):
                wait_for(
                    lambda: cag.explain(EDITED_QUESTION).module_version > stale,
                    "the compiler service to publish the new version",
                    timeout_s=RECOMPILE_S,
                )
            decision = cag.explain(EDITED_QUESTION)
            uploaded = registry.get(decision.module_ids[-1]).storage_uri
            self.console.print(
                f"[green]the compiler service published[/green] {tenant}/{route} v{decision.module_version}, "
                f"uploaded to {uploaded}"
            )
            rows.append(self.ask(cag, tenant, EDITED_QUESTION))
        return rows


def served(cag: CagClient, question: str) -> Callable[[], bool]:
    return lambda: cag.explain(question).path == "module"


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = CATCH_UP_S) -> None:
    """Poll `condition` (the services apply the registry's changes asynchronously) until it holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except CagClientError:
            pass  # not caught up yet
        if time.monotonic() > deadline:
            raise UnavailableError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.2)


def answer_row(who: str, question: str, answer: Answer) -> Row:
    decision = answer.decision
    decided = "-"
    if decision is not None:
        why = decision.rule_id or f"{decision.confidence:.2f}"
        decided = f"{decision.route} ({decision.basis}: {why})"
    modules = " → ".join(f"v{m.version} {tier_name(m.tier)}" for m in answer.summary.modules)
    if answer.summary.evidence:  # the fallback path: the retrieved chunks instead of modules
        modules = ", ".join(f"{e.path} [{e.char_start}:{e.char_end}]" for e in answer.summary.evidence)
    return Row(who, question, answer.summary.path, decided, modules, answer.summary.ttft_ms, answer.text.strip())


def tier_name(tier: str) -> str:
    return {"engine": "engine", "host_ram": "RAM", "local_disk": "disk", "origin": "origin"}.get(tier, tier)


def table(title: str, rows: list[Row]) -> Table:
    out = Table(title=title)
    for column in ("user", "question", "path", "route (decided by)", "modules (tier) or evidence", "TTFT", "answer"):
        out.add_column(column)
    for r in rows:
        ttft = f"{r.ttft_ms:.0f} ms" if r.ttft_ms is not None else "-"
        out.add_row(r.who, r.question, r.path, r.route, r.modules, ttft, r.answer)
    return out
