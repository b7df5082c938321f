"""Registry records ↔ cag.v1 messages: the only place that knows both (the core never sees protos).

Requests are validated here only for what the proto cannot express (required fields, enum values,
JSON fields); id formats and lifecycle rules are the core's.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from cag.acl import PUBLIC_TENANT, AclScope
from cag.canonical import compact_json
from cag.errors import InvalidFieldError
from cag.identifiers import MAX_NAME, MAX_URI, check_module_id, check_name, check_text, echo
from cag.metadata import DTYPE_NAMES, FORMAT_VERSION, GoldenStatus, ModuleMetadata
from cag.registry.core.audit import MAX_AUDIT_PAGE_SIZE, AuditEntry, AuditQuery
from cag.registry.core.records import ModuleChange, ModuleRecord
from cag.registry.core.route_rules import RouteInfo, RouteRule, RuleSet
from cag.registry.core.states import ModuleState
from cag.registry.core.store import MAX_PAGE_SIZE, ListQuery
from cag.registry.core.triggers import (
    AclChanged,
    LayoutChanged,
    ModelRevised,
    ModuleWithdrawn,
    SourceChanged,
    TokenizerRetired,
    Trigger,
)
from cag.rpc.modules import module_message
from cag.rpc.timestamps import datetime_of, header_of_timestamp, timestamp_of
from cag.v1 import common_pb2, registry_pb2

DEFAULT_PAGE_SIZE = 100
MAX_LAYOUT_CHARS = 256 * 1024
MAX_PAGE_TOKEN = 1024
MAX_VERSION = 2**31 - 1  # route versions are 32-bit integer columns
MAX_AUDIT_TEXT = 1024  # reason, actor
# Limits of what a registration may carry; each fits the column it is stored in (db/schema.py).
TEXT_FIELDS = {
    "model_name": MAX_NAME, "model_revision": 64, "tokenizer_revision": 64, "layout_id": MAX_NAME,
    "storage_uri": MAX_URI, "source_uri": MAX_URI, "engine_fingerprint": 1024, "layout": MAX_LAYOUT_CHARS,
}  # fmt: skip
HEX_DIGEST_FIELDS = ("context_checksum", "source_checksum", "layout_hash", "chain_hash", "header_sha256")
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
TENSOR_CHECKSUM = re.compile(r"blake3:[0-9a-f]{64}")
MAX_TOKEN_COUNT = 2**31 - 1  # the column is a 32-bit integer; no model's context comes near it
MAX_GOLDEN_RESULTS = 256
MAX_GOLDEN_EXPECT = 32
MAX_GOLDEN_TEXT = 4096
MIN_SECONDS = 0  # 1970-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z: the last instant a header's four-digit year holds
# Module fields a registration must fill (acl_principal, parent ids and expires_at may be empty).
REQUIRED_MODULE_FIELDS = (
    "module_id", "tenant_id", "route", "model_name", "model_revision", "tokenizer_revision", "context_checksum",
    "source_checksum", "dtype", "storage_uri", "layout_id", "layout_hash", "layout", "chain_hash",
    "engine_fingerprint", "tensor_checksum", "format_version", "source_uri", "header_sha256",
)  # fmt: skip


# --- enums: proto NAME_PREFIX_X ↔ Python enum member X ---


def state_proto(state: ModuleState) -> common_pb2.ModuleState.ValueType:
    return common_pb2.ModuleState.Value(f"MODULE_STATE_{state.name}")


def _member(enum: Any, prefix: str, value: int, field: str) -> str | None:
    """The member name for a proto enum value; None for UNSPECIFIED; unknown numbers are refused."""
    if value == 0:
        return None
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        raise InvalidFieldError(field, f"has unknown value {value}") from None


def state_of(value: int, field: str = "state") -> ModuleState | None:
    name = _member(common_pb2.ModuleState, "MODULE_STATE_", value, field)
    return None if name is None else ModuleState[name]


def _required_member(enum: Any, prefix: str, value: int, field: str) -> str:
    name = _member(enum, prefix, value, field)
    if name is None:
        raise InvalidFieldError(field, "is required")
    return name


# --- modules ---


def module_of(record: ModuleRecord, *, with_layout: bool = True) -> common_pb2.Module:
    """The record as a cag.v1.Module: the module as compiled, plus the registry's own bookkeeping."""
    message = module_message(
        record.metadata,
        source_uri=record.source_uri,
        storage_uri=record.storage_uri,
        header_sha256=record.header_sha256,
        with_layout=with_layout,
    )
    message.version = record.version or 0
    message.state = state_proto(record.state)
    message.state_reason = record.state_reason
    for name in ("registered_at", "published_at", "state_changed_at"):
        instant = timestamp_of(getattr(record, name))
        if instant is not None:
            getattr(message, name).CopyFrom(instant)
    return message


def registration_of(module: common_pb2.Module) -> ModuleRecord:
    """What a Register request asks to record (VALIDATING); registry-owned fields of the message are ignored."""
    metadata = metadata_of(module)
    return ModuleRecord(
        metadata=metadata,
        source_uri=module.source_uri,
        storage_uri=module.storage_uri,
        header_sha256=module.header_sha256,
        state=ModuleState.VALIDATING,
    )


def metadata_of(module: common_pb2.Module) -> ModuleMetadata:
    """The file-header part of a registration, every field checked."""
    _check_module(module)
    return ModuleMetadata(
        module_id=module.module_id, tenant_id=module.tenant_id, route=module.route, model_name=module.model_name,
        model_revision=module.model_revision, tokenizer_revision=module.tokenizer_revision,
        context_checksum=module.context_checksum, source_checksum=module.source_checksum,
        token_count=module.token_count, dtype=module.dtype,  # type: ignore[arg-type]  # checked in _check_module
        acl_principal=module.acl_principal,
        acl_scope=AclScope[_required_member(common_pb2.AclScope, "ACL_SCOPE_", module.acl_scope, "acl_scope")],
        created_at=header_of_timestamp(module.created_at) if module.HasField("created_at") else None,
        expires_at=header_of_timestamp(module.expires_at) if module.HasField("expires_at") else None,
        layout_id=module.layout_id, layout_hash=module.layout_hash, layout=module.layout,
        parent_id=module.parent_id or None, parent_chain_hash=module.parent_chain_hash or None,
        chain_hash=module.chain_hash, engine_fingerprint=module.engine_fingerprint,
        golden_status=GoldenStatus[
            _required_member(common_pb2.GoldenStatus, "GOLDEN_STATUS_", module.golden_status, "golden_status")
        ],
        golden_results=compact_json([
            {"question": r.question, "expect": list(r.expect), "answer": r.answer, "passed": r.passed}
            for r in module.golden_results
        ]),
        tensor_checksum=module.tensor_checksum, format_version=module.format_version,
    )  # fmt: skip


def _check_module(module: common_pb2.Module) -> None:
    """Every field against the rule and the column it ends in, before anything reaches the store."""
    for name in REQUIRED_MODULE_FIELDS:
        if not getattr(module, name):
            raise InvalidFieldError(name, "is required")
    check_module_id(module.module_id)
    check_name("tenant_id", module.tenant_id)
    check_name("route", module.route)
    for name, limit in TEXT_FIELDS.items():
        check_text(name, getattr(module, name), max_chars=limit)
    for name in HEX_DIGEST_FIELDS:
        _check_hex_digest(name, getattr(module, name))
    if not TENSOR_CHECKSUM.fullmatch(module.tensor_checksum):
        raise InvalidFieldError("tensor_checksum", f"{echo(module.tensor_checksum)} is not 'blake3:<64 hex digits>'")
    if module.dtype not in DTYPE_NAMES:
        raise InvalidFieldError("dtype", f"{echo(module.dtype)} is not one of {sorted(DTYPE_NAMES)}")
    if module.format_version != FORMAT_VERSION:
        raise InvalidFieldError("format_version", f"{echo(module.format_version)} is not supported ({FORMAT_VERSION})")
    if not 0 <= module.token_count <= MAX_TOKEN_COUNT:
        raise InvalidFieldError("token_count", f"must be between 0 and {MAX_TOKEN_COUNT:,}, got {module.token_count}")
    _check_parent(module)
    _check_acl(module)
    _check_times(module)
    _check_golden_results(module)
    try:
        layout = json.loads(module.layout)
    except ValueError:
        raise InvalidFieldError("layout", "is not valid JSON") from None
    if not isinstance(layout, dict):
        raise InvalidFieldError("layout", "must be a JSON object")


def _check_hex_digest(field: str, value: str) -> None:
    if not HEX_DIGEST.fullmatch(value):
        raise InvalidFieldError(field, f"{echo(value)} is not a SHA-256 hex digest (64 lower-case hex digits)")


def _check_parent(module: common_pb2.Module) -> None:
    if not module.parent_id:
        if module.parent_chain_hash:
            raise InvalidFieldError("parent_chain_hash", "must be empty for a root module (no parent_id)")
        return
    check_module_id(module.parent_id, "parent_id")
    if not module.parent_chain_hash:
        raise InvalidFieldError("parent_chain_hash", "is required when parent_id is set")
    _check_hex_digest("parent_chain_hash", module.parent_chain_hash)
    if module.parent_id == module.module_id:
        raise InvalidFieldError("parent_id", "names the module itself")


def _check_acl(module: common_pb2.Module) -> None:
    scope = AclScope[_required_member(common_pb2.AclScope, "ACL_SCOPE_", module.acl_scope, "acl_scope")]
    if (scope is AclScope.PUBLIC) != (module.tenant_id == PUBLIC_TENANT):
        raise InvalidFieldError(
            "tenant_id", f"must be {PUBLIC_TENANT!r} exactly for public modules (and only for them)"
        )
    if scope in (AclScope.WORKSPACE, AclScope.USER):
        check_name("acl_principal", module.acl_principal)
    elif module.acl_principal:
        raise InvalidFieldError("acl_principal", f"must be empty for the {scope.value} scope")


def _instant(field: str, timestamp: Timestamp) -> datetime:
    """A Timestamp inside the range a module header can hold (years 1970-9999, nanos in [0, 1e9))."""
    if not (MIN_SECONDS <= timestamp.seconds <= MAX_SECONDS and 0 <= timestamp.nanos < 1_000_000_000):
        raise InvalidFieldError(field, f"is out of range (seconds {timestamp.seconds}, nanos {timestamp.nanos})")
    return datetime_of(timestamp)


def _check_times(module: common_pb2.Module) -> None:
    created = _instant("created_at", module.created_at) if module.HasField("created_at") else None
    expires = _instant("expires_at", module.expires_at) if module.HasField("expires_at") else None
    if created is not None and expires is not None and expires <= created:
        raise InvalidFieldError("expires_at", "must be later than created_at")


def _check_golden_results(module: common_pb2.Module) -> None:
    if len(module.golden_results) > MAX_GOLDEN_RESULTS:
        raise InvalidFieldError(
            "golden_results", f"has {len(module.golden_results)} entries; at most {MAX_GOLDEN_RESULTS}"
        )
    for i, result in enumerate(module.golden_results):
        check_text(f"golden_results[{i}].question", result.question, max_chars=MAX_GOLDEN_TEXT)
        check_text(f"golden_results[{i}].answer", result.answer, max_chars=MAX_GOLDEN_TEXT)
        if len(result.expect) > MAX_GOLDEN_EXPECT:
            raise InvalidFieldError(f"golden_results[{i}].expect", f"has more than {MAX_GOLDEN_EXPECT} entries")
        for j, expect in enumerate(result.expect):
            check_text(f"golden_results[{i}].expect[{j}]", expect, max_chars=MAX_GOLDEN_TEXT)


# --- listing, changes, triggers ---


def list_query_of(request: registry_pb2.ListModulesRequest) -> ListQuery:
    """Filters ("" / UNSPECIFIED = any) and paging; page_size 0 is the default, larger ones are capped."""
    if request.page_size < 0:
        raise InvalidFieldError("page_size", f"must be >= 0, got {request.page_size}")
    for name in ("tenant_id", "route"):
        if getattr(request, name):
            check_name(name, getattr(request, name))
    for name in ("model_name", "layout_id"):
        check_text(name, getattr(request, name), max_chars=MAX_NAME)
    check_text("page_token", request.page_token, max_chars=MAX_PAGE_TOKEN)
    query = ListQuery(
        tenant_id=request.tenant_id or None,
        route=request.route or None,
        state=state_of(request.state),
        model_name=request.model_name or None,
        layout_id=request.layout_id or None,
        page_size=min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
        page_token=request.page_token,
    )
    _ = query.after  # a malformed page_token fails here, before any store work
    return query


def version_of(field: str, value: int, *, minimum: int) -> int:
    if not minimum <= value <= MAX_VERSION:
        raise InvalidFieldError(field, f"must be between {minimum} and {MAX_VERSION:,}, got {value}")
    return value


def audit_text(field: str, value: str) -> str:
    return check_text(field, value, max_chars=MAX_AUDIT_TEXT)


def audit_query_of(request: registry_pb2.ListAuditRequest) -> AuditQuery:
    """tenant_id "" = every tenant; page_size 0 is the default, larger ones are capped."""
    if request.page_size < 0:
        raise InvalidFieldError("page_size", f"must be >= 0, got {request.page_size}")
    if request.tenant_id:
        check_name("tenant_id", request.tenant_id)
    check_text("page_token", request.page_token, max_chars=MAX_PAGE_TOKEN)
    query = AuditQuery(
        tenant_id=request.tenant_id or None,
        page_size=min(request.page_size or DEFAULT_PAGE_SIZE, MAX_AUDIT_PAGE_SIZE),
        page_token=request.page_token,
    )
    _ = query.before  # a malformed page_token fails here, before any store work
    return query


def audit_entry_of(entry: AuditEntry) -> registry_pb2.AuditEntry:
    return registry_pb2.AuditEntry(
        sequence=entry.sequence, event_id=entry.event_id,
        action=registry_pb2.AuditAction.Value(f"AUDIT_ACTION_{entry.action.name}"),
        actor=entry.actor, reason=entry.reason, tenant_id=entry.tenant_id, route=entry.route,
        version=entry.version or 0, module_ids=list(entry.module_ids), trigger=entry.trigger,
        recorded_at=timestamp_of(entry.recorded_at),
    )  # fmt: skip


def change_of(change: ModuleChange) -> registry_pb2.ModuleChange:
    return registry_pb2.ModuleChange(
        sequence=change.sequence,
        event_id=change.event_id,
        reason=change.reason,
        module_id=change.module_id,
        tenant_id=change.tenant_id,
        route=change.route,
        version=change.version or 0,
        state=state_proto(change.state),
        subject=change.subject,
        occurred_at=timestamp_of(change.occurred_at),
    )


# Trigger fields: the column each is compared with bounds it (a longer value can match nothing).
TRIGGER_FIELD_LIMITS = {
    "source_uri": MAX_URI, "new_checksum": 64, "model_name": MAX_NAME, "new_revision": 64,
    "tokenizer_revision": 64, "layout_id": MAX_NAME, "layout_hash": 64,
}  # fmt: skip


def _require(message: Any, oneof: str, *names: str) -> None:
    for name in names:
        value = getattr(message, name)
        if not value:
            raise InvalidFieldError(f"{oneof}.{name}", "is required")
        if name == "tenant_id":
            check_name(f"{oneof}.{name}", value)
        elif name == "module_id":
            check_module_id(value, f"{oneof}.{name}")
        else:
            check_text(f"{oneof}.{name}", value, max_chars=TRIGGER_FIELD_LIMITS[name])


def trigger_of(request: registry_pb2.InvalidateRequest) -> Trigger:
    """The trigger dataclass for the request's oneof; every field is required (an empty one would over-match)."""
    audit_text("reason", request.reason)
    match request.WhichOneof("trigger"):
        case "source":
            s = request.source
            _require(s, "source", "tenant_id", "source_uri", "new_checksum")
            return SourceChanged(tenant_id=s.tenant_id, source_uri=s.source_uri, checksum=s.new_checksum)
        case "model":
            _require(request.model, "model", "model_name", "new_revision")
            return ModelRevised(model_name=request.model.model_name, model_revision=request.model.new_revision)
        case "tokenizer":
            _require(request.tokenizer, "tokenizer", "tokenizer_revision")
            return TokenizerRetired(tokenizer_revision=request.tokenizer.tokenizer_revision)
        case "acl":
            acl = request.acl
            _require(acl, "acl", "tenant_id")
            scope = AclScope[_required_member(common_pb2.AclScope, "ACL_SCOPE_", acl.scope, "acl.scope")]
            if acl.principal:
                check_name("acl.principal", acl.principal)
            return AclChanged(tenant_id=acl.tenant_id, scope=scope, principal=acl.principal)
        case "layout":
            _require(request.layout, "layout", "layout_id", "layout_hash")
            return LayoutChanged(layout_id=request.layout.layout_id, layout_hash=request.layout.layout_hash)
        case "module":
            _require(request.module, "module", "module_id")
            return ModuleWithdrawn(module_id=request.module.module_id)
    raise InvalidFieldError("trigger", "is required: set one of source, model, tokenizer, acl, layout, module")


def rules_of(request: registry_pb2.PutRouteRulesRequest) -> tuple[list[RouteRule], list[RouteInfo]]:
    """The request's rules and routes (their limits are checked by the core: cag.registry.core.route_rules)."""
    rules = [
        RouteRule(rule_id=r.rule_id, route=r.route, metadata=dict(r.metadata), keywords=tuple(r.keywords))
        for r in request.rules
    ]
    routes = [RouteInfo(route=i.route, description=i.description, priority=i.priority) for i in request.routes]
    return rules, routes


def rule_set_of(rule_set: RuleSet) -> registry_pb2.RouteRuleSet:
    return registry_pb2.RouteRuleSet(
        tenant_id=rule_set.tenant_id,
        version=rule_set.version,
        updated_at=timestamp_of(rule_set.updated_at),
        rules=[
            registry_pb2.RouteRule(rule_id=r.rule_id, route=r.route, metadata=dict(r.metadata), keywords=r.keywords)
            for r in rule_set.rules
        ],
        routes=[
            registry_pb2.RouteInfo(route=i.route, description=i.description, priority=i.priority)
            for i in rule_set.routes
        ],
    )
