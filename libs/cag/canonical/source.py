"""A knowledge source on disk, loaded into canonical documents, tool schemas and golden cases."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cag.canonical.golden import GoldenCase, load_golden
from cag.canonical.text import canonical_text, split_front_matter
from cag.errors import SourceError

DEFAULT_SECTION = "general"
DOCUMENT_SUFFIXES = frozenset({".md", ".txt"})
TOOLS_DIR = "tools"
GOLDEN_FILE = "golden.json"


@dataclass(frozen=True, kw_only=True)
class Document:
    """One canonical document; `path` is posix and relative to the source root."""

    path: str
    title: str
    section: str = DEFAULT_SECTION
    order: int = 0
    updated: str | None = None
    body: str
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class ToolSchema:
    """A tool schema; `text` is its canonical JSON (sorted keys, fixed separators)."""

    name: str
    text: str


@dataclass(frozen=True, kw_only=True)
class SourceBundle:
    """Everything a module is compiled from, in a stable order."""

    root: Path
    documents: tuple[Document, ...]
    tools: tuple[ToolSchema, ...]
    golden: tuple[GoldenCase, ...] = ()

    @property
    def updated(self) -> str | None:
        """The newest `updated` date of any document (ISO dates sort as strings)."""
        dates = [d.updated for d in self.documents if d.updated is not None]
        return max(dates) if dates else None


def canonical_json(obj: object) -> str:
    """The one JSON spelling of a tool schema."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=None, separators=(", ", ": "))


def compact_json(obj: object) -> str:
    """The one JSON spelling that checksums cover (module headers, layouts, golden results): sorted keys, no
    spaces, text as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_source(root: Path, section_order: Sequence[str] = ()) -> SourceBundle:
    """Load `root`: documents (*.md, *.txt), `tools/*.json` and `golden.json`; hidden paths ignored."""
    if not root.exists():
        raise SourceError(f"source {root} does not exist")
    if not root.is_dir():
        raise SourceError(f"source {root} is not a directory")
    documents: list[Document] = []
    tool_files: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if rel.parts[0] == TOOLS_DIR:
            if len(rel.parts) == 2 and path.suffix == ".json":
                tool_files.append(path)
        elif path.suffix in DOCUMENT_SUFFIXES:
            documents.append(_load_document(path, rel=PurePosixPath(*rel.parts)))
    tools = _load_tools(tool_files)
    if not documents and not tools:
        raise SourceError(f"source {root} is empty: add .md/.txt documents or tools/*.json")
    return SourceBundle(
        root=root,
        documents=tuple(sorted(documents, key=_document_key(section_order))),
        tools=tools,
        golden=load_golden(root / GOLDEN_FILE),
    )


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: a BOM some editors write is not content.
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not valid UTF-8 (byte {exc.start}); re-save it as UTF-8") from None


def _load_document(path: Path, *, rel: PurePosixPath) -> Document:
    meta, rest = split_front_matter(canonical_text(_read_text(path)), name=str(path))
    body = canonical_text(rest)
    if not body:
        raise SourceError(f"{path}: document has no content after its front matter")
    return Document(
        path=str(rel),
        title=meta.title or _heading(body) or path.stem,
        section=meta.section or DEFAULT_SECTION,
        order=meta.order,
        updated=meta.updated,
        body=body,
        extra=meta.extra,
    )


def _heading(body: str) -> str | None:
    for line in body.split("\n"):
        if line.startswith("# ") and line[2:].strip():
            return line[2:].strip()
    return None


def _load_tools(paths: list[Path]) -> tuple[ToolSchema, ...]:
    by_name: dict[str, Path] = {}
    tools: list[ToolSchema] = []
    for path in paths:
        try:
            obj = json.loads(unicodedata.normalize("NFC", _read_text(path)))
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        name = obj.get("name") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise SourceError(f"{path}: a tool schema must be a JSON object with a string 'name'")
        if name in by_name:
            raise SourceError(f"{path}: tool name {name!r} is already defined by {by_name[name]}")
        by_name[name] = path
        tools.append(ToolSchema(name=name, text=canonical_json(obj)))
    return tuple(sorted(tools, key=lambda t: t.name))


def _document_key(
    section_order: Sequence[str],
) -> Callable[[Document], tuple[int, str, int, str]]:
    rank = {section: i for i, section in enumerate(section_order)}

    def key(doc: Document) -> tuple[int, str, int, str]:
        # Listed sections by their rank; unlisted ones after them, alphabetically.
        listed = doc.section in rank
        return (
            rank.get(doc.section, len(rank)),
            "" if listed else doc.section,
            doc.order,
            doc.path,
        )

    return key
