"""`cag bench matrix`: the evaluation matrix (seed §16) — CAG against traditional RAG, the full long-context
prompt, pure classifier routing and fallback retrieval only, on the same questions, model and engine, in one run.

The evaluation knowledge base (`examples/eval/`: five routed domains and a long tail no module covers) is
compiled into one module per domain, published through the registry of a platform started for the run
(`cag platform up`'s processes), and the route rules applied for two tenants: `northwind` (keyword rules, then
the router's MiniLM classifier) and `northwind-routing` (the same routes, described, with no rules and no
modules: the classifier alone decides). Every question is then answered by every baseline in turn
(see cag.bench.matrix_baselines), and per baseline the report holds TTFT p50/p95, end-to-end latency p50,
prefill tokens per request, answer accuracy and route accuracy, with every sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cag.auth.caller import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, issue_user_token, load_key
from cag.bench import ttft
from cag.bench.arguments import positive_int
from cag.bench.e2e import wait_until
from cag.bench.evalset import NO_ROUTE, EvalQuestion, load_questions
from cag.bench.matrix_baselines import (
    ChunkIndex,
    Knowledge,
    PromptRunner,
    ask_router,
    classifier_only,
    full_context,
    rag,
)
from cag.bench.matrix_metrics import BASELINES, BaselineSummary, Sample, markdown_table, ratio, summarize
from cag.bench.matrix_plots import plot_accuracy_vs_ttft, plot_ttft_distribution
from cag.bench.output import emit_report
from cag.canonical import load_source
from cag.cli.platform_runner import Platform, inherited_env
from cag.cli.routes_cmd import read_rules_file
from cag.client import CagClient
from cag.compiler.pipeline import compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.embedding import load_minilm
from cag.engine import Engine, load_engine
from cag.infra.stack import InfraStack
from cag.layout import PromptLayout, parse_layout
from cag.models import SMOLLM2, resolve_model
from cag.rpc.clients import RegistryClient
from cag.rpc.clients.fallback import AsyncFallbackClient
from cag.rpc.modules import module_message
from cag.settings import CagSettings
from cag.v1 import common_pb2, fallback_pb2

EVAL = Path("examples/eval")
LAYOUT = Path("examples/layouts/support_agent.v1.json")
DEFAULT_OUT = Path("benchmarks/results/matrix.json")
ROUTING_TENANT_SUFFIX = "-routing"  # the tenant whose routes have descriptions only: the classifier decides
TOKEN_TTL_S = 4 * 3600.0
KV_CAPACITY = 8192  # SmolLM2's context: the full-context prompt is the longest
TARGET_TTFT_RATIO = 5.0  # CAG's TTFT p50 at least this many times lower than RAG's, at equal or better accuracy


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    value: float | None
    required: str
    passed: bool


@dataclass(frozen=True, kw_only=True)
class MatrixReport:
    created_at: str
    machine: ttft.MachineInfo
    model: str
    engine: str
    questions: int
    reps: int
    top_k: int
    module_tokens: dict[str, int]  # route → tokens of its module
    full_context_tokens: int
    baselines: dict[str, BaselineSummary]
    not_run: dict[str, str]  # baseline → why it has no figures in this run
    ttft_ratio_rag_over_cag: float | None
    targets: list[Target]
    samples: dict[str, list[Sample]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---------------------------------------------------------------- the knowledge


def load_knowledge(root: Path, prompt: PromptLayout, routes: Sequence[str]) -> Knowledge:
    """Every source folder under `root/knowledge`; a folder named like a route serves it, any other is long tail."""
    folders = sorted(p for p in (root / "knowledge").iterdir() if p.is_dir())
    ordered = [f for f in folders if f.name in routes] + [f for f in folders if f.name not in routes]
    bundles = {f.name: load_source(f, prompt.layout.section_order) for f in ordered}
    return Knowledge(
        prompt=prompt,
        contents={name: prompt.module_content(b, is_root=True) for name, b in bundles.items()},
        documents={name: b.documents for name, b in bundles.items()},
        route_of_source={name: name if name in routes else NO_ROUTE for name in bundles},
    )


def pick(questions: Sequence[EvalQuestion], limit: int | None) -> list[EvalQuestion]:
    """At most `limit` questions spread evenly over the file (every domain and type), all without a limit."""
    if limit is None or limit >= len(questions):
        return list(questions)
    step = len(questions) / limit
    return [questions[int(i * step)] for i in range(limit)]


# ---------------------------------------------------------------- the platform side


@dataclass(frozen=True, kw_only=True)
class Published:
    route: str
    module_id: str
    tokens: int


def compile_and_publish(
    engine: Engine, settings: CagSettings, args: argparse.Namespace, registry: RegistryClient, tenant: str,
    route: str, out: Path,
) -> Published:  # fmt: skip
    request = CompileRequest(
        model=args.model, tokenizer=None, source=args.eval / "knowledge" / route, layout=LAYOUT,
        acl=AclSpec.parse(f"tenant:{tenant}:{route}"), out=out, engine=args.engine,
    )  # fmt: skip
    result = compile_module(request, models_dir=settings.models_dir, engine=engine)
    assert result.path is not None  # golden questions passed
    registry.register(
        module_message(
            result.metadata,
            source_uri=request.source.resolve().as_uri(),
            storage_uri=result.path.resolve().as_uri(),
            header_sha256=result.header_sha256,
        )
    )
    registry.publish(result.metadata.module_id)
    return Published(route=route, module_id=result.metadata.module_id, tokens=result.metadata.token_count)


def apply_rules(registry: RegistryClient, rules_file: Path) -> tuple[str, str]:
    """The tenant's rules as written, and its routing twin's: the same described routes, no rules."""
    tenant, rules, routes = read_rules_file(rules_file)
    registry.put_route_rules(tenant, rules, routes, reason="cag bench matrix")
    twin = tenant + ROUTING_TENANT_SUFFIX
    registry.put_route_rules(twin, [], routes, reason="cag bench matrix: the classifier alone")
    return tenant, twin


def serves(cag: CagClient, question: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return cag.explain(question).path == "module"
        except Exception:  # not caught up with the registry yet
            return False

    return check


# ---------------------------------------------------------------- the run


def run_matrix(args: argparse.Namespace, settings: CagSettings, progress: Progress) -> MatrixReport:
    load_before = os.getloadavg()
    task = progress.add_task("loading the model", total=None)
    tick: Callable[[str], None] = lambda d: progress.update(task, description=d)  # noqa: E731
    model = resolve_model(args.model, settings.models_dir)
    engine = load_engine(args.engine, model, "fp32", kv_capacity=KV_CAPACITY)
    from transformers import AutoTokenizer

    prompt = PromptLayout(parse_layout(LAYOUT.read_text()), AutoTokenizer.from_pretrained(str(model.tokenizer_path)))
    _, _, route_infos = read_rules_file(args.eval / "routes.yaml")
    routes = [r.route for r in route_infos]
    knowledge = load_knowledge(args.eval, prompt, routes)
    questions = pick(load_questions(args.eval / "questions.json", routes), args.limit)
    runner = PromptRunner(engine, knowledge)
    with tempfile.TemporaryDirectory(prefix="cag-bench-matrix-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o711)  # the embedded Postgres runs as its own user and must reach its data below
        platform = Platform(
            workdir / "run", settings.home, model=args.model,
            base_env={**inherited_env(), "CAG_ENGINE": args.engine, "CAG_NUM_THREADS": str(args.threads)},
            service_env={"router": {"CAG_ROUTER_CLASSIFIER_ENABLED": "true"}},
        )  # fmt: skip
        tick("starting the platform")
        plan = platform.up()
        try:
            key = load_key(Path(_state(platform).auth_key_file))
            operator = issue_token(key, "user:bench-matrix", [Scope.ADMIN], [ALL_TENANTS], TOKEN_TTL_S)
            with RegistryClient(plan.address_of("registry"), token=operator) as registry:
                tenant, twin = apply_rules(registry, args.eval / "routes.yaml")
                published = []
                for route in routes:
                    tick(f"compiling and publishing {route}")
                    published.append(compile_and_publish(engine, settings, args, registry, tenant, route, workdir))
            tick("indexing the sources for the fallback")
            index_sources(plan.address_of("fallback"), operator, (tenant, twin), args.eval, knowledge)
            address = plan.address_of("router")
            user = CagClient(address, issue_user_token(key, tenant, TOKEN_TTL_S, user="eval"), timeout_s=600.0)
            routing = CagClient(address, issue_user_token(key, twin, TOKEN_TTL_S, user="eval"), timeout_s=600.0)
            with user, routing:
                warm_up(user, questions, routes, tick)
                tick("embedding the chunks")
                asks = baselines(args, runner, knowledge, user, routing)
                samples = measure(asks, questions, args.reps, progress)
        finally:
            tick("stopping the platform")
            platform.down(purge=True)
    full_tokens = len(prompt.full_prompt_tokens(list(knowledge.contents.values()), "?"))
    return report(args, load_before, questions, published, full_tokens, samples)


def _state(platform: Platform) -> Any:
    state = InfraStack(platform.run_dir).load_state()
    assert state is not None  # the platform is up
    return state


def warm_up(
    cag: CagClient, questions: Sequence[EvalQuestion], routes: Sequence[str], tick: Callable[[str], None]
) -> None:
    """Wait until the router serves every route, and answer one question per route so every module is resident in
    the engine: the measurements are of the steady state, not of a module's first load from its origin."""
    for route in routes:
        first = next((q for q in questions if q.route == route), None)
        if first is None:
            continue
        tick(f"waiting for the router to serve {route}")
        wait_until(serves(cag, first.question), f"the router to serve {route}", timeout_s=120.0)
        ask_router(cag, first)


def baselines(
    args: argparse.Namespace, runner: PromptRunner, knowledge: Knowledge, user: CagClient, routing: CagClient
) -> dict[str, Callable[[EvalQuestion], Sample]]:
    chosen = set(args.baselines)
    asks: dict[str, Callable[[EvalQuestion], Sample]] = {}
    if "cag" in chosen:
        asks["cag"] = lambda q: ask_router(user, q)
    if "rag" in chosen:
        index = ChunkIndex(load_minilm(), knowledge)
        asks["rag"] = rag(runner, knowledge, index, args.top_k)
    if "full_context" in chosen:
        asks["full_context"] = full_context(runner, knowledge)
    if "classifier_only" in chosen:
        asks["classifier_only"] = classifier_only(runner, knowledge, lambda text: routing.explain(text).route)
    if "fallback_only" in chosen:
        # The routing tenant has no modules: the router sends every question to the fallback service.
        asks["fallback_only"] = lambda q: ask_router(routing, q, routed=False)
    return asks


def index_sources(address: str, token: str, tenants: Sequence[str], root: Path, knowledge: Knowledge) -> None:
    """Every source (the long tail too) into the fallback's index, readable by each tenant as a whole: what the
    fallback path of `cag` and `fallback_only` retrieve from, the same documents as traditional RAG's."""

    async def index() -> None:
        client = AsyncFallbackClient(address, token=token)
        try:
            for tenant in tenants:
                for source, documents in knowledge.documents.items():
                    await client.index(
                        fallback_pb2.IndexRequest(
                            tenant_id=tenant,
                            source_uri=(root / "knowledge" / source).resolve().as_uri(),
                            documents=[
                                fallback_pb2.Document(path=d.path, title=d.title, text=d.body) for d in documents
                            ],
                            acl=common_pb2.Acl(scope=common_pb2.ACL_SCOPE_TENANT, tenant_id=tenant),
                        )
                    )
        finally:
            await client.close()

    asyncio.run(index())


def measure(
    asks: dict[str, Callable[[EvalQuestion], Sample]], questions: Sequence[EvalQuestion], reps: int,
    progress: Progress,
) -> dict[str, list[Sample]]:  # fmt: skip
    """Every question by every baseline, in turn (so that a change of machine load hits all of them alike);
    `reps` passes, accuracy from every pass (greedy decoding answers alike)."""
    task = progress.add_task("answering", total=reps * len(questions) * len(asks))
    samples: dict[str, list[Sample]] = {name: [] for name in asks}
    for rep in range(reps):
        for question in questions:
            for name, ask in asks.items():
                progress.update(task, description=f"pass {rep + 1}/{reps}: {name} {question.id}")
                samples[name].append(ask(question))
                progress.advance(task)
    return samples


def report(
    args: argparse.Namespace, load_before: tuple[float, float, float], questions: Sequence[EvalQuestion],
    published: Sequence[Published], full_tokens: int, samples: dict[str, list[Sample]],
) -> MatrixReport:  # fmt: skip
    summaries = {name: summarize(rows) for name, rows in samples.items()}
    not_run = {b: args.why_not.get(b, "not chosen (--baselines)") for b in BASELINES if b not in summaries}
    cag, rag_ = summaries.get("cag"), summaries.get("rag")
    speedup = ratio(rag_.ttft_p50_s, cag.ttft_p50_s) if cag and rag_ else None
    targets = []
    if cag and rag_:
        targets = [
            Target(name="ttft_p50 rag / cag", value=speedup, required=f">= {TARGET_TTFT_RATIO:g}",
                   passed=speedup is not None and speedup >= TARGET_TTFT_RATIO),
            Target(name="accuracy cag - rag", value=cag.accuracy - rag_.accuracy, required=">= 0",
                   passed=cag.accuracy >= rag_.accuracy),
        ]  # fmt: skip
    return MatrixReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=ttft.MachineInfo.current(load_before),
        model=args.model,
        engine=args.engine,
        questions=len(questions),
        reps=args.reps,
        top_k=args.top_k,
        module_tokens={p.route: p.tokens for p in published},
        full_context_tokens=full_tokens,
        baselines=summaries,
        not_run=not_run,
        ttft_ratio_rag_over_cag=speedup,
        targets=targets,
        samples=samples,
    )


# ---------------------------------------------------------------- command line


def register(sub: Any) -> None:
    p = sub.add_parser("matrix", help="CAG vs RAG, full context, classifier only and fallback only (seed §16)")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of the table")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="answer only this many questions (spread over the set)"
    )
    p.add_argument("--reps", type=positive_int, default=1, help="passes over the questions (default 1)")
    p.add_argument("--top-k", type=positive_int, default=4, help="chunks RAG puts in the prompt (default 4)")
    p.add_argument("--baselines", type=_baselines, default=list(BASELINES), help="comma-separated (default all)")
    p.add_argument("--engine", default="torch", help="engine of every baseline: torch (default) or vllm")
    p.add_argument(
        "--threads", type=positive_int, default=1, help="engine threads here and in the services (default 1)"
    )
    p.add_argument("--eval", type=Path, default=EVAL, help=f"the evaluation set (default {EVAL})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON report (default {DEFAULT_OUT})")
    p.add_argument("--model", default=SMOLLM2, help=f"catalog name of the model (default {SMOLLM2})")
    p.set_defaults(run=run, why_not={})


def _baselines(text: str) -> list[str]:
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BASELINES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(BASELINES)}")
    return chosen


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    torch.set_num_threads(args.threads)
    stderr = Console(stderr=True)
    columns = (TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        result = run_matrix(args, settings, progress)
    table = markdown_table(result.baselines)
    emit_report(result.to_json(), args.out, as_json=args.json, render=lambda c: c.print(table, markup=False),
                width=140, stderr=stderr)  # fmt: skip
    args.out.with_suffix(".md").write_text(table)
    title = f"{result.model} on {result.engine}, {result.questions} questions"
    stem = args.out.with_suffix("")
    for path in (
        plot_ttft_distribution(result.samples, stem.parent / f"{stem.name}_ttft.png", f"TTFT per baseline: {title}"),
        plot_accuracy_vs_ttft(result.baselines, stem.parent / f"{stem.name}_accuracy_vs_ttft.png",
                              f"accuracy vs median TTFT: {title}"),
    ):  # fmt: skip
        stderr.print(f"wrote {path}")
    stderr.print(f"wrote {args.out.with_suffix('.md')}")
    return 0
