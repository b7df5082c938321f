"""`cag demo`: the main job end to end on one machine.

Starts embedded NATS and Postgres (unless already up), runs the registry, compiles the demo
knowledge into a module chain (a shared system+tools module, then one module per domain on top of
it), registers and publishes every module over gRPC, resolves each domain's route to its chain and
answers questions from the restored modules. Per question it prints the answer, the TTFT from the
module files and the TTFT of a full prefill of the same tokens, and checks both give the same tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from rich.console import Console
from rich.table import Table

from cag.auth import Scope
from cag.auth.tokens import issue_token, load_key
from cag.cli.progress import RichCompileObserver
from cag.compiler.pipeline import CompileResult, compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.engine import Engine, SamplingParams, load_engine
from cag.errors import InvalidInputError
from cag.infra.ports import free_port
from cag.infra.stack import InfraStack, InfraState
from cag.models import SMOLLM2, resolve_model
from cag.registry.app import RegistryApp
from cag.registry.convert import module_of
from cag.registry.core.records import ModuleRecord
from cag.registry.core.states import ModuleState
from cag.registry.settings import RegistrySettings
from cag.rpc.auth import authenticated_channel
from cag.session import Answer, ChainContext, answer_from_modules, answer_with_full_prefill
from cag.settings import CagSettings, InfraSettings
from cag.v1 import registry_pb2, registry_pb2_grpc

TENANT = "acme"
DOMAINS = ("billing", "shipping", "api")
QUESTIONS_PER_DOMAIN = 2
TOKEN_TTL_S = 3600.0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="compile, publish and query the demo knowledge end to end")
    p.add_argument("--examples", type=Path, default=Path("examples"))
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--model", default=SMOLLM2)
    p.add_argument("--questions", type=int, default=QUESTIONS_PER_DOMAIN, help="questions per domain")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class DemoRow:
    route: str
    question: str
    answer: str
    module_ttft_s: float
    full_ttft_s: float
    identical: bool


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    console = Console()
    if not console.is_terminal:  # piped or logged: wide enough for the answers table to stay readable
        console = Console(width=160)
    stack = InfraStack(settings.run_dir)
    started_here = not stack.is_up()
    with console.status("starting embedded NATS and Postgres"):
        state = stack.up(fast=True)
    console.print(f"[dim]• NATS {state.nats_url} · Postgres {state.database_url}[/dim]")
    try:
        return asyncio.run(_demo(args, settings, state, console))
    finally:
        if started_here:
            stack.down()


async def _demo(args: argparse.Namespace, settings: CagSettings, state: InfraState, console: Console) -> int:
    address = f"127.0.0.1:{free_port()}"
    key_file = Path(state.auth_key_file)
    infra = InfraSettings(
        database_url=state.database_url, nats_url=state.nats_url_for("registry"), auth_key_file=key_file
    )
    registry_settings = RegistrySettings(infra=infra, address=address)
    app = RegistryApp(registry_settings)
    await app.start()
    console.print(f"[dim]• registry serving on {address}[/dim]")
    # The demo acts as the tenant's compiler and its cache pool: a token for tenant acme only.
    token = issue_token(load_key(key_file), "service:demo", [Scope.WRITE], [TENANT], TOKEN_TTL_S)
    try:
        async with authenticated_channel(address, token) as channel:
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            engine = await asyncio.to_thread(
                load_engine, "torch", resolve_model(args.model, settings.models_dir), "fp32"
            )
            knowledge = args.examples / "knowledge"
            shared = await _compile_and_publish(knowledge / "shared", (), args, settings, engine, registry, console)
            for domain in DOMAINS:
                await _compile_and_publish(knowledge / domain, (shared,), args, settings, engine, registry, console)
            rows = []
            for domain in DOMAINS:
                resolved = await registry.ResolveRoute(registry_pb2.ResolveRouteRequest(tenant_id=TENANT, route=domain))
                paths = [local_path(m.storage_uri) for m in resolved.chain]
                console.print(f"[dim]• route {TENANT}/{domain} v{resolved.route_version} → "
                              f"{' → '.join(m.module_id for m in resolved.chain)}[/dim]")  # fmt: skip
                ctx = ChainContext.open(paths, models_dir=settings.models_dir, engine=engine)
                for module, record in zip(ctx.modules, resolved.chain, strict=True):
                    # The files must be the ones the registry published, not merely self-consistent.
                    module.check_record(tensor_checksum=record.tensor_checksum, header_sha256=record.header_sha256)
                cases = json.loads((knowledge / domain / "golden.json").read_text())[: args.questions]
                rows += [await asyncio.to_thread(_ask, ctx, domain, case["question"]) for case in cases]
    finally:
        await app.stop()
    console.print(_table(rows))
    return 0 if all(r.identical for r in rows) else 1


async def _compile_and_publish(
    source: Path,
    parents: tuple[Path, ...],
    args: argparse.Namespace,
    settings: CagSettings,
    engine: Engine,
    registry: registry_pb2_grpc.RegistryServiceAsyncStub,
    console: Console,
) -> Path:
    request = CompileRequest(
        model=args.model, tokenizer=None, source=source, layout=args.examples / "layouts" / "support_agent.v1.json",
        acl=AclSpec.parse(f"tenant:{TENANT}:{source.name}"), out=args.out, parents=parents,
    )  # fmt: skip
    console.rule(f"compile {source.name}")
    with RichCompileObserver(console) as observer:
        result = await asyncio.to_thread(
            compile_module, request, models_dir=settings.models_dir, engine=engine, observer=observer
        )
    assert result.path is not None
    version = await _publish(registry, result, source_uri=source.resolve().as_uri())
    console.print(f"[green]published[/green] {result.metadata.module_id} as {TENANT}/{source.name} v{version}")
    return result.path


async def _publish(
    registry: registry_pb2_grpc.RegistryServiceAsyncStub, result: CompileResult, *, source_uri: str
) -> int:
    assert result.path is not None
    record = ModuleRecord(
        metadata=result.metadata,
        source_uri=source_uri,
        storage_uri=result.path.resolve().as_uri(),
        header_sha256=result.header_sha256,
        state=ModuleState.VALIDATING,
    )
    await registry.Register(registry_pb2.RegisterRequest(module=module_of(record)))
    published = await registry.Publish(registry_pb2.PublishRequest(module_id=result.metadata.module_id))
    return int(published.module.version)


def local_path(storage_uri: str) -> Path:
    """The file behind a `file://` URI or a plain path (the demo's modules are local files)."""
    parsed = urlparse(storage_uri)
    if parsed.scheme not in ("", "file"):
        raise InvalidInputError(f"the demo reads local modules only, not {storage_uri}")
    return Path(unquote(parsed.path) if parsed.scheme else storage_uri)


def _ask(ctx: ChainContext, route: str, question: str) -> DemoRow:
    sampling = SamplingParams(max_new_tokens=48, stop_sequences=ctx.prompt.paragraph_break_sequences())
    from_module, full = Answer(), Answer()
    for _ in answer_from_modules(ctx, ctx.modules, question, sampling, from_module):
        pass
    for _ in answer_with_full_prefill(ctx, question, sampling, full):
        pass
    return DemoRow(
        route=route,
        question=question,
        answer=ctx.decode(from_module.tokens).strip(),
        module_ttft_s=from_module.ttft_s,
        full_ttft_s=full.ttft_s,
        identical=from_module.tokens == full.tokens,
    )


def _table(rows: list[DemoRow]) -> Table:
    table = Table(title="answers from restored modules (SmolLM2-135M-Instruct, greedy)")
    for col in ("route", "question", "answer", "TTFT module", "TTFT full prefill", "speed-up", "same tokens"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.route, r.question, r.answer, f"{r.module_ttft_s * 1000:.0f} ms", f"{r.full_ttft_s * 1000:.0f} ms",
            f"{r.full_ttft_s / r.module_ttft_s:.1f}x", "yes" if r.identical else "[red]NO[/red]",
        )  # fmt: skip
    return table
