"""`cag compile`: build one KV module from a source directory."""

from __future__ import annotations

import argparse
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cag.cli.progress import RichCompileObserver
from cag.cli.registry_client import registry_client, run_with_rpc_errors
from cag.compiler.pipeline import CompileResult, compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.metadata import DTYPE_NAMES
from cag.rpc.clients import RegistryClient
from cag.rpc.modules import module_message
from cag.settings import ENGINE_KINDS, CagSettings


def register(sub: Any) -> None:
    p = sub.add_parser("compile", help="compile a knowledge source into a KV module")
    p.add_argument("--model", required=True, help="catalog name or model folder")
    p.add_argument("--tokenizer", help="catalog name or folder (default: the model's own)")
    p.add_argument("--source", required=True, type=Path, help="directory of documents, tools/*.json, golden.json")
    p.add_argument("--layout", required=True, type=Path, help="layout JSON file")
    p.add_argument("--acl", required=True, help="public | tenant:<t>[:<route>] | workspace:<t>:<w> | user:<t>:<u>")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--parent", action="append", default=[], type=Path, help="parent module file (repeat for a chain)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPE_NAMES))
    p.add_argument(
        "--engine",
        choices=ENGINE_KINDS,
        help="engine computing the rows, the one serving them (default: CAG_ENGINE)",
    )
    p.add_argument("--route", help="route name (default: from --acl or the source directory name)")
    p.add_argument("--created-at", help="ISO date of the module (default: SOURCE_DATE_EPOCH or newest 'updated')")
    p.add_argument("--ttl-days", type=int, help="module expires this many days after created_at")
    p.add_argument(
        "--storage-prefix", help="with --publish: URI prefix the registry records as storage_uri (default: --out)"
    )
    p.add_argument(
        "--keep-failed", action="store_true", help="write the module even when golden tests fail (unpublishable)"
    )
    p.add_argument(
        "--publish",
        action="store_true",
        help="register the module in the registry and publish it (storage_uri defaults to the absolute file:// URI)",
    )
    p.add_argument("--registry", help="registry host:port for --publish (default: CAG_REGISTRY_ADDRESS)")
    p.add_argument("--source-uri", help="source URI recorded in the registry (default: file:// URI of --source)")
    p.set_defaults(run=run)


def _created_at(explicit: str | None, settings: CagSettings) -> str | None:
    if explicit:
        return explicit
    epoch = settings.source_date_epoch
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    request = CompileRequest(
        model=args.model,
        tokenizer=args.tokenizer,
        source=args.source,
        layout=args.layout,
        acl=AclSpec.parse(args.acl),
        out=args.out,
        parents=tuple(args.parent),
        dtype=args.dtype,
        route=args.route,
        created_at=_created_at(args.created_at, settings),
        ttl_days=args.ttl_days,
        keep_failed=args.keep_failed,
        engine=args.engine or settings.engine,
    )
    # Credentials are resolved before the compile: a missing token should not cost a prefill to find out.
    client = registry_client(settings, args.registry) if args.publish else None
    console = Console(stderr=True)
    with contextlib.closing(client) if client else contextlib.nullcontext():
        with RichCompileObserver(console) as observer:
            result = compile_module(request, models_dir=settings.models_dir, observer=observer)
        console.print(summary_table(result))
        if client is not None and result.path is not None:
            # Failed goldens are registered too: the registry's refusal (FAILED_PRECONDITION) is the answer.
            return run_with_rpc_errors(lambda: publish(result, args, client))
    if not result.publishable:
        console.print("[red]golden questions failed: the module is marked failed and cannot be published[/red]")
        return 4
    return 0


def publish(result: CompileResult, args: argparse.Namespace, client: RegistryClient) -> int:
    """Register the written module (with both its checksums), then publish it; print the version its route assigned."""
    assert result.path is not None
    source_uri = args.source_uri or args.source.resolve().as_uri()
    # Where the file lives is a registry fact, not part of the module's bytes.
    prefix = args.storage_prefix or args.out.resolve().as_uri()
    storage_uri = f"{prefix.rstrip('/')}/{result.path.name}"
    message = module_message(
        result.metadata, source_uri=source_uri, storage_uri=storage_uri, header_sha256=result.header_sha256
    )
    registered = client.register(message)
    published = client.publish(registered.module_id)
    print(f"published {published.module_id} as version {published.version} of {published.tenant_id}/{published.route}")
    return 0


def summary_table(result: CompileResult) -> Table:
    m = result.metadata
    table = Table(title=f"module {m.module_id}", show_header=False)
    passed = sum(r.passed for r in result.golden)
    rows = [
        ("file", str(result.path)),
        ("route / tenant / acl", f"{m.route} / {m.tenant_id} / {m.acl_scope.value}"),
        ("tokens", f"{m.token_count:,} (on a parent chain of {result.parent_tokens:,})"),
        ("model", f"{m.model_name} rev {m.model_revision[:12]} · tokenizer {m.tokenizer_revision[:12]} · {m.dtype}"),
        ("layout", f"{m.layout_id} ({m.layout_hash[:12]})"),
        ("context checksum", m.context_checksum[:16]),
        ("golden", f"{m.golden_status.value}: {passed}/{len(result.golden)} passed"),
        ("prefill", f"{result.prefill_seconds:.2f} s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
