"""Module metadata: every field of the seed's KVCacheModule plus layout, chain, engine and checksums.

Stored in the safetensors header as strings (the format allows nothing else). Torch-free: the registry,
the router and every other service that only reads metadata import this, not the file format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from cag.acl import AclScope
from cag.errors import ModuleCorruptedError

# The tensor checksum's algorithm, named in its value ("blake3:<hex>"); see cag.kvmodule.checksum.
CHECKSUM_ALGORITHM = "blake3"

# cag-kv/2: the header holds content only (no storage location; a date only when the sources give one).
FORMAT_VERSION = "cag-kv/2"

DtypeName = Literal["fp32", "bf16", "fp16"]
DTYPE_NAMES: tuple[DtypeName, ...] = ("fp32", "bf16", "fp16")


class GoldenStatus(StrEnum):
    NONE = "none"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class ModuleMetadata:
    module_id: str
    tenant_id: str
    route: str
    model_name: str
    model_revision: str
    tokenizer_revision: str
    context_checksum: str
    source_checksum: str
    token_count: int
    dtype: DtypeName
    acl_scope: AclScope
    acl_principal: str  # the workspace or user id for those scopes, else ""
    # Only a date derived from the sources (their newest `updated:`, or SOURCE_DATE_EPOCH): where a module is
    # stored and when it was compiled are registry facts, so the same inputs give the same bytes anywhere.
    created_at: str | None
    expires_at: str | None
    layout_id: str
    layout_hash: str
    layout: str  # the layout itself (canonical JSON), so a module can be queried on its own
    parent_id: str | None
    parent_chain_hash: str | None
    chain_hash: str
    engine_fingerprint: str
    golden_status: GoldenStatus
    golden_results: str  # JSON list of {question, expect, answer, passed}
    tensor_checksum: str = ""
    format_version: str = FORMAT_VERSION

    def to_header(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "" if value is None else str(value)
        return out

    @classmethod
    def from_header(cls, header: dict[str, str]) -> ModuleMetadata:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - header.keys())
        if missing:
            raise ModuleCorruptedError(f"module metadata lacks fields: {', '.join(missing)}")
        if header["format_version"] != FORMAT_VERSION:
            raise ModuleCorruptedError(
                f"module format {header['format_version']!r} is not supported (expected {FORMAT_VERSION})"
            )
        if not header.get("tensor_checksum", "").startswith(f"{CHECKSUM_ALGORITHM}:"):
            raise ModuleCorruptedError(
                f"module tensor checksum {header.get('tensor_checksum', '')[:16]!r}… is not {CHECKSUM_ALGORITHM}"
            )
        if header["dtype"] not in DTYPE_NAMES:
            raise ModuleCorruptedError(f"module dtype {header['dtype']!r} is not one of {sorted(DTYPE_NAMES)}")
        try:
            return cls(
                **{name: header[name] for name in names if name not in _TYPED},
                token_count=int(header["token_count"]),
                dtype=header["dtype"],  # narrowed to DtypeName by the check above
                acl_scope=AclScope(header["acl_scope"]),
                golden_status=GoldenStatus(header["golden_status"]),
                created_at=header["created_at"] or None,
                expires_at=header["expires_at"] or None,
                parent_id=header["parent_id"] or None,
                parent_chain_hash=header["parent_chain_hash"] or None,
            )
        except ValueError as e:
            raise ModuleCorruptedError(f"module metadata is malformed: {e}") from e


_TYPED = {
    "token_count", "dtype", "acl_scope", "golden_status", "created_at", "expires_at", "parent_id", "parent_chain_hash",
}  # fmt: skip
