"""Canonical text: the one normalization every source document goes through.

Module identity is a hash of text, so two files that mean the same thing
(CRLF vs LF, composed vs decomposed accents, trailing blanks) must become the
same bytes before anything is hashed or tokenized.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from cag.errors import SourceError

_TRAILING_BLANKS = re.compile(r"[ \t]+$", re.MULTILINE)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FENCE = "---"


def canonical_text(raw: str) -> str:
    """NFC, LF line ends, no trailing blanks, no leading/trailing blank lines, one final newline."""
    text = unicodedata.normalize("NFC", raw)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_BLANKS.sub("", text)
    text = text.strip("\n")
    return f"{text}\n" if text else ""


@dataclass(frozen=True, kw_only=True)
class FrontMatter:
    """The parsed `---` header of a document; unknown keys are kept in `extra`."""

    title: str | None = None
    section: str | None = None
    order: int = 0
    updated: str | None = None
    extra: tuple[tuple[str, str], ...] = ()


def split_front_matter(text: str, *, name: str) -> tuple[FrontMatter, str]:
    """Split canonical `text` into its front matter and the rest; `name` labels errors."""
    lines = text.split("\n")
    if lines[0] != _FENCE:
        return FrontMatter(), text
    try:
        end = lines.index(_FENCE, 1)
    except ValueError:
        raise SourceError(f"{name}:1: front matter opened with '---' is never closed") from None
    values: dict[str, str] = {}
    lines_of: dict[str, int] = {}
    for number, line in enumerate(lines[1:end], start=2):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        key = key.strip()
        if not colon or not key:
            raise SourceError(f"{name}:{number}: front matter line must be 'key: value', got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        values[key] = value
        lines_of[key] = number
    rest = "\n".join(lines[end + 1 :])
    return _front_matter(values, lines_of, name=name), rest


def _front_matter(values: dict[str, str], lines_of: dict[str, int], *, name: str) -> FrontMatter:
    order = 0
    if "order" in values:
        try:
            order = int(values["order"])
        except ValueError:
            where = f"{name}:{lines_of['order']}"
            raise SourceError(f"{where}: 'order' must be an integer, got {values['order']!r}") from None
    updated = values.get("updated")
    if updated is not None and not _is_iso_date(updated):
        where = f"{name}:{lines_of['updated']}"
        raise SourceError(f"{where}: 'updated' must be a date YYYY-MM-DD, got {updated!r}")
    known = {"title", "section", "order", "updated"}
    return FrontMatter(
        title=values.get("title") or None,
        section=values.get("section") or None,
        order=order,
        updated=updated,
        extra=tuple(sorted((k, v) for k, v in values.items() if k not in known)),
    )


def _is_iso_date(value: str) -> bool:
    # fromisoformat alone accepts "20260105" and week dates; the regex pins the one spelling.
    if not _ISO_DATE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True
