"""Content hashes: the identity of a source, of a compiled context, and of a module chain.

Every field is length-prefixed and named, so no two different inputs can
serialize to the same bytes (no "ab"+"c" == "a"+"bc" collisions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cag.canonical.source import SourceBundle
from cag.metadata import FORMAT_VERSION


def _field(name: str, value: str | int | None) -> bytes:
    if value is None:
        return f"{len(name)}:{name}~".encode()
    data = str(value).encode()
    kind = "i" if isinstance(value, int) else "s"
    return f"{len(name)}:{name}{kind}{len(data)}:".encode() + data


def _digest(fields: Iterable[tuple[str, str | int | None]]) -> str:
    h = hashlib.sha256()
    for name, value in fields:
        h.update(_field(name, value))
    return h.hexdigest()


def _bundle_fields(bundle: SourceBundle) -> Iterable[tuple[str, str | int | None]]:
    yield "format", "cag.source.v1"
    yield "documents", len(bundle.documents)
    for doc in bundle.documents:
        yield "path", doc.path
        yield "title", doc.title
        yield "section", doc.section
        yield "order", doc.order
        yield "body", doc.body
    yield "tools", len(bundle.tools)
    for tool in bundle.tools:
        yield "name", tool.name
        yield "text", tool.text


def source_checksum(bundle: SourceBundle) -> str:
    """sha256 hex of the bundle's documents and tools; golden cases are tests, not content."""
    return _digest(_bundle_fields(bundle))


def context_checksum(
    *,
    source_checksum: str,
    layout_hash: str,
    model_revision: str,
    tokenizer_revision: str,
    parent_chain_hash: str | None,
    dtype: str,
    tenant_id: str,
    acl_scope: str,
    acl_principal: str,
) -> str:
    """sha256 hex identifying a compiled module's inputs: same inputs, same module.

    Who may read the module is one of its inputs: the same knowledge compiled for user alice and for
    user bob (or for two tenants) is two modules, so neither can replace the other's file or record.
    """
    return _digest(
        [
            ("format", "cag.context.v2"),
            ("source_checksum", source_checksum),
            ("layout_hash", layout_hash),
            ("model_revision", model_revision),
            ("tokenizer_revision", tokenizer_revision),
            ("parent_chain_hash", parent_chain_hash),
            ("dtype", dtype),
            ("tenant_id", tenant_id),
            ("acl_scope", acl_scope),
            ("acl_principal", acl_principal),
        ]
    )


def module_key(*, context_checksum: str, tenant_id: str, route: str, acl_scope: str, acl_principal: str) -> str:
    """sha256 hex of everything that names a module: its inputs, its file format, and where and for whom it is
    served (a new file format gives new bytes, so it gives new ids: old and new files never share one)."""
    return _digest(
        [
            ("format", "cag.module-id.v1"),
            ("file_format", FORMAT_VERSION),
            ("context_checksum", context_checksum),
            ("tenant_id", tenant_id),
            ("route", route),
            ("acl_scope", acl_scope),
            ("acl_principal", acl_principal),
        ]
    )


def chain_hash(*, parent_chain_hash: str | None, context_checksum: str) -> str:
    """sha256 hex covering a module and, through its parent's chain hash, all its ancestors."""
    return _digest(
        [
            ("format", "cag.chain.v1"),
            ("parent_chain_hash", parent_chain_hash),
            ("context_checksum", context_checksum),
        ]
    )
