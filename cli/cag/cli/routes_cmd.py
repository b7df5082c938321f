"""`cag routes apply | show`: a tenant's route rules, versioned in the registry.

A rules file (YAML, or JSON, which YAML reads too)::

    tenant: acme
    routes:
      - {route: billing, description: "Invoices, refunds, payment methods", priority: 2}
    rules:
      - {id: billing-intent, route: billing, metadata: {intent: billing}}
      - {id: refund-words, route: billing, keywords: [refund, invoice]}

Rules apply in order: the first whose conditions all hold picks its route (metadata rules before keyword
rules). `apply` stores the file as the tenant's next version; the registry checks every limit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from cag.cli.registry_client import registry_client, run_with_rpc_errors
from cag.errors import InvalidInputError
from cag.settings import CagSettings
from cag.v1 import registry_pb2

MAX_FILE_BYTES = 4 << 20


def register(sub: Any) -> None:
    p = sub.add_parser("routes", help="a tenant's route rules: apply a rules file, show a version")
    which = p.add_subparsers(dest="routes_command", required=True)
    apply = which.add_parser("apply", help="store a rules file as the tenant's next version")
    apply.add_argument("file", type=Path, help="YAML (or JSON) rules file")
    apply.add_argument("--tenant", help="the tenant (default: the file's `tenant`)")
    apply.add_argument("--expected-version", type=int, default=0, help="refuse unless this is the current version")
    apply.add_argument("--reason", default="", help="why (audit)")
    apply.add_argument("--registry", help="registry host:port (default: CAG_REGISTRY_ADDRESS)")
    apply.set_defaults(run=run_apply)
    show = which.add_parser("show", help="the rules of one version (default: the newest)")
    show.add_argument("--tenant", required=True)
    show.add_argument("--version", type=int, default=0)
    show.add_argument("--registry", help="registry host:port (default: CAG_REGISTRY_ADDRESS)")
    show.set_defaults(run=run_show)


def read_rules_file(
    path: Path, tenant: str | None = None
) -> tuple[str, list[registry_pb2.RouteRule], list[registry_pb2.RouteInfo]]:
    """(tenant, rules, routes) of a rules file; InvalidInputError naming the file and what is wrong with it.

    The shape is checked here; names, lengths and the other limits by the registry, which owns them."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInputError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidInputError(f"cannot read {path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"{path}: expected a mapping with tenant, routes and rules")
    tenant = tenant or document.get("tenant")
    if not isinstance(tenant, str):
        raise InvalidInputError(f"{path}: no tenant (give `tenant:` in the file or --tenant)")
    routes = [_route(path, i, r) for i, r in enumerate(_list(path, document, "routes"))]
    rules = [_rule(path, i, r) for i, r in enumerate(_list(path, document, "rules"))]
    return tenant, rules, routes


def _list(path: Path, document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise InvalidInputError(f"{path}: `{key}` must be a list")
    return value


def _route(path: Path, i: int, item: Any) -> registry_pb2.RouteInfo:
    fields = _mapping(path, f"routes[{i}]", item, {"route", "description", "priority"})
    return registry_pb2.RouteInfo(
        route=_text(path, f"routes[{i}].route", fields.get("route")),
        description=_text(path, f"routes[{i}].description", fields.get("description", "")),
        priority=_int(path, f"routes[{i}].priority", fields.get("priority", 0)),
    )


def _rule(path: Path, i: int, item: Any) -> registry_pb2.RouteRule:
    where = f"rules[{i}]"
    fields = _mapping(path, where, item, {"id", "route", "metadata", "keywords"})
    metadata = fields.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"{path}: {where}.metadata must be a mapping")
    keywords = fields.get("keywords", [])
    if not isinstance(keywords, list):
        raise InvalidInputError(f"{path}: {where}.keywords must be a list")
    return registry_pb2.RouteRule(
        rule_id=_text(path, f"{where}.id", fields.get("id")),
        route=_text(path, f"{where}.route", fields.get("route")),
        metadata={str(k): _text(path, f"{where}.metadata.{k}", v) for k, v in metadata.items()},
        keywords=[_text(path, f"{where}.keywords", k) for k in keywords],
    )


def _mapping(path: Path, where: str, item: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidInputError(f"{path}: {where} must be a mapping")
    unknown = sorted(set(map(str, item)) - allowed)
    if unknown:
        raise InvalidInputError(f"{path}: {where} has unknown key(s) {', '.join(unknown)}; known: {sorted(allowed)}")
    return item


def _text(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{path}: {where} must be text")
    return value


def _int(path: Path, where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(f"{path}: {where} must be a whole number")
    return value


def run_apply(args: argparse.Namespace, settings: CagSettings) -> int:
    tenant, rules, routes = read_rules_file(args.file, args.tenant)

    def apply() -> int:
        with registry_client(settings, args.registry) as registry:
            stored = registry.put_route_rules(
                tenant, rules, routes, expected_version=args.expected_version, reason=args.reason
            )
        print(stored.version)
        print(f"route rules of {tenant}: version {stored.version} ({len(rules)} rules, {len(routes)} routes)",
              file=sys.stderr)  # fmt: skip
        return 0

    return run_with_rpc_errors(apply)


def run_show(args: argparse.Namespace, settings: CagSettings) -> int:
    def show() -> int:
        with registry_client(settings, args.registry) as registry:
            rule_set = registry.get_route_rules(args.tenant, args.version)
        console = Console()
        if not console.is_terminal:  # piped: wide enough that keywords are not wrapped mid-phrase
            console = Console(width=200)
        console.print(f"route rules of {rule_set.tenant_id}: version {rule_set.version}")
        routes = Table("route", "priority", "description")
        for info in rule_set.routes:
            routes.add_row(info.route, str(info.priority or 1), info.description)
        rules = Table("rule", "route", "metadata", "keywords")
        for rule in rule_set.rules:
            metadata = ", ".join(f"{k}={v}" for k, v in sorted(rule.metadata.items()))
            rules.add_row(rule.rule_id, rule.route, metadata, ", ".join(rule.keywords))
        console.print(routes, rules)
        return 0

    return run_with_rpc_errors(show)
