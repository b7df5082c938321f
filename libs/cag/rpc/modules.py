"""Module metadata → cag.v1.Module: the file-header fields, with where the file lives and where it came from.

The registry adds its own bookkeeping (version, state, times) to this; clients build Register requests
with it directly instead of dressing metadata up as a registry record.
"""

from __future__ import annotations

import json
from typing import Any

from cag.acl import AclScope
from cag.metadata import GoldenStatus, ModuleMetadata
from cag.rpc.timestamps import timestamp_of_header
from cag.v1 import common_pb2


def acl_scope_proto(scope: AclScope) -> common_pb2.AclScope.ValueType:
    return common_pb2.AclScope.Value(f"ACL_SCOPE_{scope.name}")


def golden_status_proto(status: GoldenStatus) -> common_pb2.GoldenStatus.ValueType:
    return common_pb2.GoldenStatus.Value(f"GOLDEN_STATUS_{status.name}")


def module_message(
    metadata: ModuleMetadata,
    *,
    source_uri: str,
    storage_uri: str,
    header_sha256: str,
    with_layout: bool = True,
) -> common_pb2.Module:
    """A module as compiled: every header field, plus `storage_uri` (where the file is), `source_uri` (the
    knowledge it was compiled from) and the file's header checksum. Registry-owned fields stay unset."""
    m = metadata
    return common_pb2.Module(
        module_id=m.module_id, tenant_id=m.tenant_id, route=m.route, model_name=m.model_name,
        model_revision=m.model_revision, tokenizer_revision=m.tokenizer_revision,
        context_checksum=m.context_checksum, source_checksum=m.source_checksum, token_count=m.token_count,
        dtype=m.dtype, storage_uri=storage_uri, acl_principal=m.acl_principal,
        acl_scope=acl_scope_proto(m.acl_scope),
        created_at=timestamp_of_header(m.created_at), expires_at=timestamp_of_header(m.expires_at),
        layout_id=m.layout_id, layout_hash=m.layout_hash, layout=m.layout if with_layout else "",
        parent_id=m.parent_id or "", parent_chain_hash=m.parent_chain_hash or "", chain_hash=m.chain_hash,
        engine_fingerprint=m.engine_fingerprint,
        golden_status=golden_status_proto(m.golden_status),
        golden_results=[_golden_result(r) for r in json.loads(m.golden_results or "[]")],
        tensor_checksum=m.tensor_checksum, format_version=m.format_version, header_sha256=header_sha256,
        source_uri=source_uri,
    )  # fmt: skip


def _golden_result(result: dict[str, Any]) -> common_pb2.GoldenResult:
    return common_pb2.GoldenResult(
        question=str(result.get("question", "")),
        expect=[str(e) for e in result.get("expect", [])],
        answer=str(result.get("answer", "")),
        passed=bool(result.get("passed", False)),
    )
