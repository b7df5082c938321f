"""`cag modules list | show | rollback | audit`: read and steer the registry's modules, and read who changed
them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from cag.cli.registry_client import (
    acl_name,
    golden_name,
    registry_client,
    run_with_rpc_errors,
    state_name,
    state_value,
)
from cag.registry.core.states import ModuleState
from cag.settings import CagSettings
from cag.v1 import common_pb2, registry_pb2

STATES = [s.value for s in ModuleState]


def register(sub: Any) -> None:
    p = sub.add_parser("modules", help="list, show and roll back modules in the registry; read its audit trail")
    which = p.add_subparsers(dest="modules_command", required=True)

    ls = which.add_parser("list", help="modules matching every filter, a page at a time")
    ls.add_argument("--tenant", default="", help="only this tenant's modules")
    ls.add_argument("--route", default="", help="only modules of this route")
    ls.add_argument("--state", choices=STATES, help="only modules in this state")
    ls.add_argument("--model", default="", help="only modules of this model (catalog name)")
    ls.add_argument("--layout", default="", help="only modules of this layout id")
    ls.add_argument("--page-size", type=int, default=0, help="modules per page (0: the registry's default)")
    ls.add_argument("--page-token", default="", help="continue from a previous page")
    ls.add_argument("--all", action="store_true", help="follow next_page_token through every page")
    ls.add_argument("--registry", help="registry host:port (default: CAG_REGISTRY_ADDRESS)")
    ls.set_defaults(run=run_list)

    show = which.add_parser("show", help="one module with every field")
    show.add_argument("module_id")
    show.add_argument("--json", action="store_true", help="print the module as JSON (proto field names)")
    show.add_argument("--registry", help="registry host:port (default: CAG_REGISTRY_ADDRESS)")
    show.set_defaults(run=run_show)

    rollback = which.add_parser("rollback", help="point a route at an earlier published version")
    rollback.add_argument("--tenant", required=True)
    rollback.add_argument("--route", required=True)
    rollback.add_argument("--to-version", type=int, required=True, help="the published version to serve (>= 1)")
    rollback.add_argument("--reason", default="", help="why (audit)")
    rollback.add_argument("--registry", help="registry host:port (default: CAG_REGISTRY_ADDRESS)")
    rollback.set_defaults(run=run_rollback)

    audit = which.add_parser("audit", help="who published, rolled back or invalidated what, why and when")
    audit.add_argument("--tenant", default="", help="only this tenant's entries (default: every tenant's)")
    audit.add_argument("--page-size", type=int, default=0, help="entries per page (0: the registry's default)")
    audit.add_argument("--page-token", default="", help="continue from a previous page")
    audit.add_argument("--json", action="store_true", help="print the entries as JSON lines (proto field names)")
    audit.add_argument("--registry", help="registry host:port (default: CAG_REGISTRY_ADDRESS)")
    audit.set_defaults(run=run_audit)


def run_list(args: argparse.Namespace, settings: CagSettings) -> int:
    if args.page_size < 0:
        print(f"error (INVALID_ARGUMENT): --page-size must be >= 0, got {args.page_size}", file=sys.stderr)
        return 2
    request = registry_pb2.ListModulesRequest(
        tenant_id=args.tenant,
        route=args.route,
        state=state_value(args.state) if args.state else common_pb2.MODULE_STATE_UNSPECIFIED,
        model_name=args.model,
        layout_id=args.layout,
        page_size=args.page_size,
        page_token=args.page_token,
    )

    def call() -> int:
        with registry_client(settings, args.registry) as client:
            if args.all:
                modules, next_token = list(client.list_all(request)), ""
            else:
                response = client.list_page(request)
                modules, next_token = list(response.modules), response.next_page_token
        Console(width=200).print(list_table(modules))
        if next_token:
            print(f"more modules: --page-token {next_token} (or --all)", file=sys.stderr)
        return 0

    return run_with_rpc_errors(call)


def list_table(modules: Iterable[common_pb2.Module]) -> Table:
    table = Table(title="modules")
    for column in ("module id", "tenant", "route", "version", "state", "tokens", "model", "layout", "golden"):
        table.add_column(column, justify="right" if column in ("version", "tokens") else "left", no_wrap=True)
    for m in modules:
        table.add_row(
            m.module_id,
            m.tenant_id,
            m.route,
            str(m.version) if m.version else "-",
            state_name(m.state),
            f"{m.token_count:,}",
            m.model_name,
            m.layout_id,
            golden_name(m.golden_status),
        )
    return table


def run_show(args: argparse.Namespace, settings: CagSettings) -> int:
    def call() -> int:
        with registry_client(settings, args.registry) as client:
            module = client.get(args.module_id)
        if args.json:
            print(json.dumps(module_json(module), indent=2, ensure_ascii=False))
        else:
            Console(width=200).print(show_table(module))
        return 0

    return run_with_rpc_errors(call)


def module_json(module: common_pb2.Module) -> dict[str, Any]:
    """Every field, defaults included, with proto field names; the layout is embedded as JSON."""
    data = MessageToDict(module, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if module.layout:
        data["layout"] = json.loads(module.layout)
    return data


def _time(module: common_pb2.Module, field: str) -> str:
    return getattr(module, field).ToJsonString() if module.HasField(field) else "-"  # type: ignore[arg-type]


def show_table(m: common_pb2.Module) -> Table:
    table = Table(title=f"module {m.module_id}", show_header=False)
    passed = sum(r.passed for r in m.golden_results)
    rows = [
        ("tenant / route", f"{m.tenant_id} / {m.route}"),
        ("version", str(m.version) if m.version else "- (unpublished)"),
        ("state", state_name(m.state) + (f" ({m.state_reason})" if m.state_reason else "")),
        ("acl", acl_name(m.acl_scope) + (f":{m.acl_principal}" if m.acl_principal else "")),
        ("tokens", f"{m.token_count:,}"),
        ("model", f"{m.model_name} rev {m.model_revision[:12]} · tokenizer {m.tokenizer_revision[:12]} · {m.dtype}"),
        ("layout", f"{m.layout_id} ({m.layout_hash[:12]})"),
        ("parent", m.parent_id or "-"),
        ("chain hash", m.chain_hash[:16]),
        ("context checksum", m.context_checksum[:16]),
        ("source", f"{m.source_uri} (checksum {m.source_checksum[:12]})"),
        ("storage", m.storage_uri),
        ("golden", f"{golden_name(m.golden_status)}: {passed}/{len(m.golden_results)} passed"),
        ("created / expires", f"{_time(m, 'created_at')} / {_time(m, 'expires_at')}"),
        ("registered / published", f"{_time(m, 'registered_at')} / {_time(m, 'published_at')}"),
        ("state changed", _time(m, "state_changed_at")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def run_rollback(args: argparse.Namespace, settings: CagSettings) -> int:
    def call() -> int:
        with registry_client(settings, args.registry) as client:
            module = client.rollback(args.tenant, args.route, args.to_version, reason=args.reason)
        print(f"{module.tenant_id}/{module.route} now serves version {module.version} ({module.module_id})")
        return 0

    return run_with_rpc_errors(call)


def run_audit(args: argparse.Namespace, settings: CagSettings) -> int:
    if args.page_size < 0:
        print(f"error (INVALID_ARGUMENT): --page-size must be >= 0, got {args.page_size}", file=sys.stderr)
        return 2
    request = registry_pb2.ListAuditRequest(tenant_id=args.tenant, page_size=args.page_size, page_token=args.page_token)

    def call() -> int:
        with registry_client(settings, args.registry) as client:
            response = client.list_audit(request)
        if args.json:
            for entry in response.entries:
                print(json.dumps(MessageToDict(entry, preserving_proto_field_name=True), ensure_ascii=False))
        else:
            Console(width=200).print(audit_table(response.entries))
        if response.next_page_token:
            print(f"older entries: --page-token {response.next_page_token}", file=sys.stderr)
        return 0

    return run_with_rpc_errors(call)


def audit_table(entries: Iterable[registry_pb2.AuditEntry]) -> Table:
    table = Table(title="audit trail (newest first)")
    for column in ("#", "when", "action", "actor", "tenant", "what", "modules", "why", "event id"):
        table.add_column(column, justify="right" if column == "#" else "left")
    for e in entries:
        # Publish and Rollback name a route version; Invalidate names its trigger.
        what = e.trigger or f"{e.route} v{e.version}"
        table.add_row(
            str(e.sequence),
            e.recorded_at.ToJsonString(),
            registry_pb2.AuditAction.Name(e.action).removeprefix("AUDIT_ACTION_").lower(),
            e.actor,
            e.tenant_id or "(every tenant)",
            what,
            ", ".join(e.module_ids) or "-",
            e.reason or "-",
            e.event_id,
        )
    return table
