"""`cag sources sync [--tenant T]`: recompute the canonical checksum of every registered source and publish
`cag.invalidate.source` for each one that changed — what a CI job or a cron in ops automation runs. file://
folders are read in place; s3:// prefixes are fetched (CAG_S3_* name the store).

The sources are those of the modules the registry serves (published) or last served (stale). Each is read as
the compiler reads it (canonical form, the section order of the module's layout), so an edit that changes no
canonical byte (trailing spaces, line endings) is not a change. A source this machine cannot read is reported
and skipped, never guessed. With --dry-run nothing is published.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from cag.canonical import load_source, source_checksum
from cag.cli.invalidate_cmd import DEFAULT_TIMEOUT_S, ops_nats_url, publish
from cag.cli.registry_client import registry_client, run_with_rpc_errors
from cag.errors import CagError
from cag.events.schemas import Envelope, SourceChangedV1
from cag.layout import parse_layout
from cag.objectstore import ObjectStore
from cag.objectstore.s3 import S3Settings
from cag.objectstore.sources import readable_source
from cag.settings import CagSettings
from cag.v1 import common_pb2, registry_pb2

LIVE_STATES = (common_pb2.MODULE_STATE_PUBLISHED, common_pb2.MODULE_STATE_STALE)


def register(sub: Any) -> None:
    p = sub.add_parser("sources", help="knowledge sources the registry's modules were compiled from")
    which = p.add_subparsers(dest="sources_command", required=True)
    sync = which.add_parser(
        "sync", help="publish cag.invalidate.source for every registered source whose content changed"
    )
    sync.add_argument("--tenant", help="only this tenant's sources (default: every tenant the credentials read)")
    sync.add_argument("--registry", help="registry host:port (default: CAG_REGISTRY_ADDRESS)")
    sync.add_argument("--nats", help="NATS server URL (default: CAG_NATS_URL, else the ops identity of cag infra up)")
    sync.add_argument("--dry-run", action="store_true", help="report what changed, publish nothing")
    sync.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for each ack")
    sync.set_defaults(run=run)


@dataclass(frozen=True, kw_only=True)
class Source:
    tenant_id: str
    uri: str
    recorded: str  # the source_checksum its newest module was built from
    section_order: tuple[str, ...]
    modules: int


def registered_sources(args: argparse.Namespace, settings: CagSettings) -> list[Source]:
    found: dict[tuple[str, str], tuple[common_pb2.Module, int]] = {}
    with registry_client(settings, args.registry) as registry:
        for state in LIVE_STATES:
            request = registry_pb2.ListModulesRequest(tenant_id=args.tenant or "", state=state)
            for module in registry.list_all(request):
                key = (module.tenant_id, module.source_uri)
                newest, count = found.get(key, (module, 0))
                found[key] = (module if module.version >= newest.version else newest, count + 1)
        layouts = {key: registry.get(module.module_id).layout for key, (module, _) in found.items()}
    return [
        Source(
            tenant_id=tenant, uri=uri, recorded=module.source_checksum, modules=count,
            section_order=tuple(parse_layout(layouts[(tenant, uri)]).section_order),
        )
        for (tenant, uri), (module, count) in sorted(found.items())
    ]  # fmt: skip


def current_checksum(source: Source, store: ObjectStore) -> str:
    with readable_source(source.uri, store) as folder:
        return source_checksum(load_source(folder, source.section_order))


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    return run_with_rpc_errors(lambda: sync(args, settings))


def sync(args: argparse.Namespace, settings: CagSettings) -> int:
    console = Console()
    table = Table(title="registered sources")
    for name in ("tenant", "source", "modules", "outcome"):
        table.add_column(name)
    changed = unreadable = 0
    nats_url = ops_nats_url(args, settings)
    store = ObjectStore(S3Settings.of(settings.infra))
    for source in registered_sources(args, settings):
        try:
            checksum = current_checksum(source, store)
        except CagError as e:
            unreadable += 1
            table.add_row(source.tenant_id, source.uri, str(source.modules), f"[yellow]not read: {e}[/yellow]")
            continue
        if checksum == source.recorded:
            table.add_row(source.tenant_id, source.uri, str(source.modules), "unchanged")
            continue
        changed += 1
        event = Envelope.wrap(SourceChangedV1(tenant_id=source.tenant_id, source_uri=source.uri, checksum=checksum))
        if not args.dry_run:
            asyncio.run(publish(nats_url, event, timeout_s=args.timeout))
        outcome = "changed (dry run)" if args.dry_run else f"changed: published {event.subject} {event.event_id}"
        table.add_row(source.tenant_id, source.uri, str(source.modules), f"[green]{outcome}[/green]")
    console.print(table)
    console.print(f"{changed} changed, {unreadable} not readable here")
    return 0
