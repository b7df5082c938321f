"""Rows ↔ records: the only place that knows both the table columns and the module metadata."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from cag.acl import AclScope
from cag.canonical import compact_json
from cag.metadata import GoldenStatus, ModuleMetadata
from cag.registry.core.records import ModuleRecord
from cag.registry.core.states import ModuleState
from cag.registry.db.schema import ModuleRow

_FROM_ROW_EXCLUDED = {"layout", "golden_results", "created_at", "expires_at", "acl_scope", "golden_status"}


def row_values(record: ModuleRecord) -> dict[str, Any]:
    m = record.metadata
    values = {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name != "layout"}
    values.update(
        acl_scope=m.acl_scope.value,
        golden_status=m.golden_status.value,
        golden_results=json.loads(m.golden_results or "[]"),
        expires_at=datetime.fromisoformat(m.expires_at) if m.expires_at else None,
        state=record.state.value,
        state_reason=record.state_reason,
        source_uri=record.source_uri,
        storage_uri=record.storage_uri,
        header_sha256=record.header_sha256,
        # The column predates dates being optional: "" stands for none.
        created_at=m.created_at or "",
        version=record.version,
    )
    return values


def record_of(row: ModuleRow, layout_body: dict[str, Any]) -> ModuleRecord:
    fields = {f.name for f in dataclasses.fields(ModuleMetadata)} - _FROM_ROW_EXCLUDED
    metadata = ModuleMetadata(
        **{name: getattr(row, name) for name in fields},
        created_at=row.created_at or None,
        layout=compact_json(layout_body),
        golden_results=compact_json(row.golden_results),
        expires_at=row.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if row.expires_at else None,
        acl_scope=AclScope(row.acl_scope),
        golden_status=GoldenStatus(row.golden_status),
    )
    return ModuleRecord(
        metadata=metadata,
        source_uri=row.source_uri,
        storage_uri=row.storage_uri,
        header_sha256=row.header_sha256,
        state=ModuleState(row.state),
        state_reason=row.state_reason,
        version=row.version,
        registered_at=row.registered_at,
        published_at=row.published_at,
        state_changed_at=row.state_changed_at,
    )
