"""A tenant's routing configuration, versioned: deterministic rules in order, and what each route is about.

The registry keeps every version (immutable; the newest is the one in force) and checks each against the limits
cag/v1/registry.proto states, so the router never meets a rule it cannot compile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cag.errors import CagError, InvalidFieldError, Status
from cag.identifiers import check_name, check_text

MAX_RULES = 1000
MAX_ROUTES = 1000
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 128
MAX_METADATA_VALUE_CHARS = 128
MAX_DESCRIPTION_CHARS = 2048
MAX_PRIORITY = 100
RULE_KEYS = ("intent", "product_area", "workflow_state")
_RULE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class RuleSetVersionConflictError(CagError):
    """The rule set changed since the version the caller based its change on."""

    status = Status.ABORTED
    reason = "RULES_VERSION_CONFLICT"


@dataclass(frozen=True, kw_only=True)
class RouteRule:
    rule_id: str
    route: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RouteInfo:
    route: str
    description: str = ""
    priority: int = 0  # 0 = 1


@dataclass(frozen=True, kw_only=True)
class RuleSet:
    """One version of a tenant's rules (version 0: the tenant has none; `updated_at` None then)."""

    tenant_id: str
    version: int
    rules: tuple[RouteRule, ...] = ()
    routes: tuple[RouteInfo, ...] = ()
    updated_at: datetime | None = None

    def body(self) -> dict[str, list[dict[str, object]]]:
        """What the store keeps of the rules and routes (JSON)."""
        return {
            "rules": [
                {"rule_id": r.rule_id, "route": r.route, "metadata": dict(r.metadata), "keywords": list(r.keywords)}
                for r in self.rules
            ],
            "routes": [{"route": i.route, "description": i.description, "priority": i.priority} for i in self.routes],
        }

    @classmethod
    def from_body(
        cls, tenant_id: str, version: int, body: Mapping[str, Sequence[Mapping[str, object]]], updated_at: datetime
    ) -> RuleSet:
        rules = tuple(
            RouteRule(
                rule_id=str(r["rule_id"]),
                route=str(r["route"]),
                metadata={str(k): str(v) for k, v in dict(r["metadata"]).items()},  # type: ignore[call-overload]
                keywords=tuple(str(k) for k in r["keywords"]),  # type: ignore[attr-defined]
            )
            for r in body["rules"]
        )
        routes = tuple(
            RouteInfo(route=str(i["route"]), description=str(i["description"]), priority=int(str(i["priority"])))
            for i in body["routes"]
        )
        return cls(tenant_id=tenant_id, version=version, rules=rules, routes=routes, updated_at=updated_at)


def checked_rule_set(tenant_id: str, rules: Sequence[RouteRule], routes: Sequence[RouteInfo]) -> RuleSet:
    """The rules and routes as a new (unversioned) rule set, or InvalidFieldError naming the first bad field."""
    check_name("tenant_id", tenant_id)
    if len(rules) > MAX_RULES:
        raise InvalidFieldError("rules", f"holds {len(rules)} rules; at most {MAX_RULES}")
    if len(routes) > MAX_ROUTES:
        raise InvalidFieldError("routes", f"holds {len(routes)} routes; at most {MAX_ROUTES}")
    known: set[str] = set()
    for i, info in enumerate(routes):
        where = f"routes[{i}]"
        check_name(f"{where}.route", info.route)
        if info.route in known:
            raise InvalidFieldError(f"{where}.route", f"lists route {info.route!r} twice")
        known.add(info.route)
        check_text(f"{where}.description", info.description, max_chars=MAX_DESCRIPTION_CHARS)
        if not 0 <= info.priority <= MAX_PRIORITY:
            raise InvalidFieldError(f"{where}.priority", f"must be 0 (= 1) to {MAX_PRIORITY}, not {info.priority}")
    ids: set[str] = set()
    for i, rule in enumerate(rules):
        _check_rule(f"rules[{i}]", rule, known, ids)
    return RuleSet(tenant_id=tenant_id, version=0, rules=tuple(rules), routes=tuple(routes))


def _check_rule(where: str, rule: RouteRule, routes: set[str], ids: set[str]) -> None:
    if not _RULE_ID.fullmatch(rule.rule_id):
        raise InvalidFieldError(f"{where}.rule_id", "must match [a-z0-9][a-z0-9._-]* (at most 64 characters)")
    if rule.rule_id in ids:
        raise InvalidFieldError(f"{where}.rule_id", f"{rule.rule_id!r} is used by an earlier rule")
    ids.add(rule.rule_id)
    if rule.route not in routes:
        raise InvalidFieldError(f"{where}.route", f"names route {check_name(f'{where}.route', rule.route)!r}, "
                                "which `routes` does not list")  # fmt: skip
    for key, value in rule.metadata.items():
        if key not in RULE_KEYS:
            raise InvalidFieldError(f"{where}.metadata", f"key {key[:32]!r} is not one of {', '.join(RULE_KEYS)}")
        check_text(f"{where}.metadata.{key}", value, max_chars=MAX_METADATA_VALUE_CHARS, required=True)
    if len(rule.keywords) > MAX_KEYWORDS:
        raise InvalidFieldError(f"{where}.keywords", f"holds {len(rule.keywords)} keywords; at most {MAX_KEYWORDS}")
    for j, keyword in enumerate(rule.keywords):
        check_text(f"{where}.keywords[{j}]", keyword, max_chars=MAX_KEYWORD_CHARS, required=True)
        if not keyword.strip():
            raise InvalidFieldError(f"{where}.keywords[{j}]", "is blank")
    if not rule.metadata and not rule.keywords:
        raise InvalidFieldError(where, "has neither metadata conditions nor keywords: it would match everything")
