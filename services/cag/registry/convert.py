"""Registry records ↔ cag.v1 messages: the only place that knows both (the core never sees protos).

Requests are validated here only for what the proto cannot express (required fields, enum values,
JSON fields); id formats and lifecycle rules are the core's.
"""

from __future__ import annotations

import json
from typing import Any

from cag.errors import InvalidFieldError
from cag.grpc.timestamps import header_of_timestamp, timestamp_of, timestamp_of_header
from cag.kvmodule import DTYPES, AclScope, GoldenStatus, ModuleMetadata
from cag.kvmodule.metadata import FORMAT_VERSION
from cag.registry.records import ModuleChange, ModuleRecord
from cag.registry.states import ModuleState
from cag.registry.store import MAX_PAGE_SIZE, ListQuery
from cag.registry.triggers import (
    AclChanged,
    LayoutChanged,
    ModelRevised,
    ModuleWithdrawn,
    SourceChanged,
    TokenizerRetired,
    Trigger,
)
from cag.v1 import common_pb2, registry_pb2

DEFAULT_PAGE_SIZE = 100
# Module fields a registration must fill (acl_principal, parent ids and expires_at may be empty).
REQUIRED_MODULE_FIELDS = (
    "module_id", "tenant_id", "route", "model_name", "model_revision", "tokenizer_revision", "context_checksum",
    "source_checksum", "dtype", "storage_uri", "layout_id", "layout_hash", "layout", "chain_hash",
    "engine_fingerprint", "tensor_checksum", "format_version", "source_uri",
)  # fmt: skip


def canonical_json(value: Any) -> str:
    """The form the Postgres store gives back, so a round trip through either store is exact."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- enums: proto NAME_PREFIX_X ↔ Python enum member X ---


def acl_scope_proto(scope: AclScope) -> common_pb2.AclScope.ValueType:
    return common_pb2.AclScope.Value(f"ACL_SCOPE_{scope.name}")


def golden_status_proto(status: GoldenStatus) -> common_pb2.GoldenStatus.ValueType:
    return common_pb2.GoldenStatus.Value(f"GOLDEN_STATUS_{status.name}")


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
    m = record.metadata
    return common_pb2.Module(
        module_id=m.module_id, tenant_id=m.tenant_id, route=m.route, model_name=m.model_name,
        model_revision=m.model_revision, tokenizer_revision=m.tokenizer_revision,
        context_checksum=m.context_checksum, source_checksum=m.source_checksum, token_count=m.token_count,
        dtype=m.dtype, storage_uri=m.storage_uri, acl_principal=m.acl_principal,
        acl_scope=acl_scope_proto(m.acl_scope),
        created_at=timestamp_of_header(m.created_at), expires_at=timestamp_of_header(m.expires_at),
        layout_id=m.layout_id, layout_hash=m.layout_hash, layout=m.layout if with_layout else "",
        parent_id=m.parent_id or "", parent_chain_hash=m.parent_chain_hash or "", chain_hash=m.chain_hash,
        engine_fingerprint=m.engine_fingerprint,
        golden_status=golden_status_proto(m.golden_status),
        golden_results=[_golden_result(r) for r in json.loads(m.golden_results or "[]")],
        tensor_checksum=m.tensor_checksum, format_version=m.format_version, header_sha256=record.header_sha256,
        version=record.version or 0, state=state_proto(record.state),
        state_reason=record.state_reason, source_uri=record.source_uri,
        registered_at=timestamp_of(record.registered_at), published_at=timestamp_of(record.published_at),
        state_changed_at=timestamp_of(record.state_changed_at),
    )  # fmt: skip


def _golden_result(result: dict[str, Any]) -> common_pb2.GoldenResult:
    return common_pb2.GoldenResult(
        question=str(result.get("question", "")),
        expect=[str(e) for e in result.get("expect", [])],
        answer=str(result.get("answer", "")),
        passed=bool(result.get("passed", False)),
    )


def metadata_of(module: common_pb2.Module) -> ModuleMetadata:
    """The file-header part of a registration; registry-owned fields of the message are ignored."""
    _check_module(module)
    return ModuleMetadata(
        module_id=module.module_id, tenant_id=module.tenant_id, route=module.route, model_name=module.model_name,
        model_revision=module.model_revision, tokenizer_revision=module.tokenizer_revision,
        context_checksum=module.context_checksum, source_checksum=module.source_checksum,
        token_count=module.token_count, dtype=module.dtype,  # type: ignore[arg-type]  # checked in _check_module
        storage_uri=module.storage_uri, acl_principal=module.acl_principal,
        acl_scope=AclScope[_required_member(common_pb2.AclScope, "ACL_SCOPE_", module.acl_scope, "acl_scope")],
        created_at=header_of_timestamp(module.created_at),
        expires_at=header_of_timestamp(module.expires_at) if module.HasField("expires_at") else None,
        layout_id=module.layout_id, layout_hash=module.layout_hash, layout=module.layout,
        parent_id=module.parent_id or None, parent_chain_hash=module.parent_chain_hash or None,
        chain_hash=module.chain_hash, engine_fingerprint=module.engine_fingerprint,
        golden_status=GoldenStatus[
            _required_member(common_pb2.GoldenStatus, "GOLDEN_STATUS_", module.golden_status, "golden_status")
        ],
        golden_results=canonical_json([
            {"question": r.question, "expect": list(r.expect), "answer": r.answer, "passed": r.passed}
            for r in module.golden_results
        ]),
        tensor_checksum=module.tensor_checksum, format_version=module.format_version,
    )  # fmt: skip


def _check_module(module: common_pb2.Module) -> None:
    for name in REQUIRED_MODULE_FIELDS:
        if not getattr(module, name):
            raise InvalidFieldError(name, "is required")
    if not module.HasField("created_at"):
        raise InvalidFieldError("created_at", "is required")
    if module.dtype not in DTYPES:
        raise InvalidFieldError("dtype", f"{module.dtype!r} is not one of {sorted(DTYPES)}")
    if module.format_version != FORMAT_VERSION:
        raise InvalidFieldError("format_version", f"{module.format_version!r} is not supported ({FORMAT_VERSION})")
    if module.token_count < 0:
        raise InvalidFieldError("token_count", f"must be >= 0, got {module.token_count}")
    if module.parent_id and not module.parent_chain_hash:
        raise InvalidFieldError("parent_chain_hash", "is required when parent_id is set")
    try:
        json.loads(module.layout)
    except ValueError:
        raise InvalidFieldError("layout", "is not valid JSON") from None


# --- listing, changes, triggers ---


def list_query_of(request: registry_pb2.ListModulesRequest) -> ListQuery:
    """Filters ("" / UNSPECIFIED = any) and paging; page_size 0 is the default, larger ones are capped."""
    if request.page_size < 0:
        raise InvalidFieldError("page_size", f"must be >= 0, got {request.page_size}")
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


def _require(message: Any, oneof: str, *names: str) -> None:
    for name in names:
        if not getattr(message, name):
            raise InvalidFieldError(f"{oneof}.{name}", "is required")


def trigger_of(request: registry_pb2.InvalidateRequest) -> Trigger:
    """The trigger dataclass for the request's oneof; every field is required (an empty one would over-match)."""
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
            return AclChanged(tenant_id=acl.tenant_id, scope=scope, principal=acl.principal)
        case "layout":
            _require(request.layout, "layout", "layout_id", "layout_hash")
            return LayoutChanged(layout_id=request.layout.layout_id, layout_hash=request.layout.layout_hash)
        case "module":
            _require(request.module, "module", "module_id")
            return ModuleWithdrawn(module_id=request.module.module_id)
    raise InvalidFieldError("trigger", "is required: set one of source, model, tokenizer, acl, layout, module")
