"""Canonical knowledge sources: normalized text, stable order, content checksums, golden cases."""

from cag.canonical.checksum import chain_hash, context_checksum, source_checksum
from cag.canonical.golden import GoldenCase, load_golden
from cag.canonical.source import (
    Document,
    SourceBundle,
    ToolSchema,
    canonical_json,
    compact_json,
    load_source,
)
from cag.canonical.text import FrontMatter, canonical_text, split_front_matter

__all__ = [
    "Document",
    "FrontMatter",
    "GoldenCase",
    "SourceBundle",
    "ToolSchema",
    "canonical_json",
    "canonical_text",
    "chain_hash",
    "compact_json",
    "context_checksum",
    "load_golden",
    "load_source",
    "source_checksum",
    "split_front_matter",
]
