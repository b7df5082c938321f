"""`cag demo`: compile the demo knowledge into a module chain and answer questions from it.

For every question it prints the answer, the TTFT when the module chain is restored
from its files, and the TTFT of a full prefill of the same tokens, and checks that
both produce the same tokens.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cag.cli.progress import RichCompileObserver
from cag.compiler.pipeline import compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.engine import Engine, SamplingParams, load_engine
from cag.models import SMOLLM2, resolve_model
from cag.session import Answer, ChainContext, answer_from_modules, answer_with_full_prefill
from cag.settings import CagSettings

DOMAINS = ("billing", "shipping", "api")
QUESTIONS_PER_DOMAIN = 2


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="compile the demo knowledge and answer demo questions from modules")
    p.add_argument("--examples", type=Path, default=Path("examples"))
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--model", default=SMOLLM2)
    p.add_argument("--questions", type=int, default=QUESTIONS_PER_DOMAIN, help="questions per domain")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class DemoRow:
    domain: str
    question: str
    answer: str
    module_ttft_s: float
    full_ttft_s: float
    identical: bool


def _compile(
    source: Path,
    args: argparse.Namespace,
    settings: CagSettings,
    engine: Engine,
    parents: tuple[Path, ...],
    console: Console,
) -> Path:
    request = CompileRequest(
        model=args.model,
        tokenizer=None,
        source=source,
        layout=args.examples / "layouts" / "support_agent.v1.json",
        acl=AclSpec.parse(f"tenant:acme:{source.name}"),
        out=args.out,
        parents=parents,
    )
    console.rule(f"compile {source.name}")
    with RichCompileObserver(console) as observer:
        result = compile_module(request, models_dir=settings.models_dir, engine=engine, observer=observer)
    assert result.path is not None
    return result.path


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    console = Console()
    model = resolve_model(args.model, settings.models_dir)
    engine = load_engine("torch", model, "fp32")
    knowledge = args.examples / "knowledge"
    shared = _compile(knowledge / "shared", args, settings, engine, (), console)
    rows = []
    for domain in DOMAINS:
        module = _compile(knowledge / domain, args, settings, engine, (shared,), console)
        ctx = ChainContext.open([shared, module], models_dir=settings.models_dir, engine=engine)
        cases = json.loads((knowledge / domain / "golden.json").read_text())[: args.questions]
        for case in cases:
            rows.append(_ask(ctx, domain, case["question"]))
    console.print(_table(rows))
    return 0 if all(r.identical for r in rows) else 1


def _ask(ctx: ChainContext, domain: str, question: str) -> DemoRow:
    sampling = SamplingParams(max_new_tokens=48)
    from_module, full = Answer(), Answer()
    for _ in answer_from_modules(ctx, ctx.modules, question, sampling, from_module):
        pass
    for _ in answer_with_full_prefill(ctx, question, sampling, full):
        pass
    return DemoRow(
        domain=domain,
        question=question,
        answer=ctx.decode(from_module.tokens).strip(),
        module_ttft_s=from_module.ttft_s,
        full_ttft_s=full.ttft_s,
        identical=from_module.tokens == full.tokens,
    )


def _table(rows: list[DemoRow]) -> Table:
    table = Table(title="answers from restored modules (SmolLM2, greedy)")
    for col in ("domain", "question", "answer", "TTFT module", "TTFT full prefill", "speed-up", "same tokens"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.domain,
            r.question,
            r.answer,
            f"{r.module_ttft_s * 1000:.0f} ms",
            f"{r.full_ttft_s * 1000:.0f} ms",
            f"{r.full_ttft_s / r.module_ttft_s:.1f}x",
            "yes" if r.identical else "[red]NO[/red]",
        )
    return table
