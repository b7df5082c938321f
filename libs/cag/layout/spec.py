"""The layout file: a versioned JSON spec of how knowledge and queries are placed in the prompt."""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cag.canonical import compact_json
from cag.errors import LayoutError, UnknownLayoutError


def _fields_of(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid format template: {exc}") from None


def _only_field(template: str, field: str, *, required: bool) -> str:
    names = _fields_of(template)
    if any(name != field for name in names):
        raise ValueError(f"may only use the placeholder {{{field}}} (write literal braces as {{{{ }}}})")
    if required and len(names) != 1:
        raise ValueError(f"must contain {{{field}}} exactly once")
    return template


class Layout(BaseModel):
    """A prompt layout; its hash is part of every module's identity."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    format_version: Literal[1]
    layout_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: int = Field(ge=1)
    system_text: str
    section_order: list[str] = []
    section_header: str = "## {section}"
    document_header: str = "### {title}"
    document_separator: str = "\n\n"
    tools_header: str = "## Tools"
    tool_separator: str = "\n"
    query_template: str = "{query}"
    boundary_token: str = "<|im_end|>"
    knowledge_role: Literal["system"] = "system"
    max_query_tokens: int = Field(default=256, ge=1)

    @field_validator("query_template")
    @classmethod
    def _query_template(cls, value: str) -> str:
        return _only_field(value, "query", required=True)

    @field_validator("section_header")
    @classmethod
    def _section_header(cls, value: str) -> str:
        return _only_field(value, "section", required=False)

    @field_validator("document_header")
    @classmethod
    def _document_header(cls, value: str) -> str:
        return _only_field(value, "title", required=False)

    @property
    def name(self) -> str:
        """The layout's display name, e.g. `support_agent.v1`."""
        return f"{self.layout_id}.v{self.version}"


def layout_json(layout: Layout) -> str:
    """The layout's canonical JSON: what its hash covers and what a module embeds."""
    return compact_json(layout.model_dump())


def layout_hash(layout: Layout) -> str:
    """sha256 hex of the layout's canonical JSON."""
    return hashlib.sha256(layout_json(layout).encode()).hexdigest()


def parse_layout(text: str, *, origin: str = "layout") -> Layout:
    """Validate layout JSON text (a file's content or the copy a module embeds)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{origin}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    try:
        return Layout.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise LayoutError(f"{origin}: invalid layout: {problems}") from None


def load_layout(path: Path) -> Layout:
    """Read and validate a layout JSON file."""
    if not path.is_file():
        raise UnknownLayoutError(f"layout file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LayoutError(f"{path}: not valid UTF-8") from None
    return parse_layout(text, origin=str(path))
