"""Documents into retrievable chunks: structure-aware (markdown headings and paragraphs; a tool schema whole),
bounded in characters, each with its exact place in the document and an id that depends only on its content and
place."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

# A markdown ATX heading line: its level and its text.
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# Paragraphs are separated by one or more blank lines.
_BLANK_LINES = re.compile(r"\n[ \t]*\n+")
# Where a paragraph too long for one chunk may be cut: after a sentence, else at whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
TOOL_SUFFIX = ".json"


@dataclass(frozen=True, kw_only=True)
class SourceDocument:
    """One document of a source: `path` inside the source (its stable id), full text."""

    path: str
    title: str
    text: str


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """`text == document.text[start:end]`; `heading` is the document title and the headings above the chunk."""

    chunk_id: str
    source_uri: str
    path: str
    start: int
    end: int
    heading: str
    text: str


@dataclass(frozen=True, kw_only=True)
class ChunkLimits:
    max_chars: int = 800  # about 200 tokens of English: a few chunks fit a small model's prompt
    min_chars: int = 200  # paragraphs of one section are packed together up to max_chars, never under this alone


def chunk_id(tenant_id: str, source_uri: str, path: str, start: int, end: int, text: str) -> str:
    """Deterministic: the same text at the same place of the same tenant's source always has the same id."""
    key = "\x00".join((tenant_id, source_uri, path, str(start), str(end), text))
    return "chunk-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def chunk_document(
    tenant_id: str, source_uri: str, document: SourceDocument, limits: ChunkLimits = ChunkLimits()
) -> list[Chunk]:
    """The document's chunks in document order. A tool schema (a `.json` document) is kept whole unless it is
    longer than `max_chars`; markdown is cut at headings first, then between paragraphs, then inside a paragraph
    (after a sentence, else at whitespace, else anywhere)."""
    spans = (
        [(document.title, 0, len(document.text))]
        if document.path.endswith(TOOL_SUFFIX)
        else list(_packed(document, limits))
    )
    chunks = []
    for heading, start, end in spans:
        for piece_start, piece_end in _bounded(document.text, start, end, limits.max_chars):
            text = document.text[piece_start:piece_end]
            if not text.strip():
                continue
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(tenant_id, source_uri, document.path, piece_start, piece_end, text),
                    source_uri=source_uri,
                    path=document.path,
                    start=piece_start,
                    end=piece_end,
                    heading=heading,
                    text=text,
                )
            )
    return chunks


def _sections(document: SourceDocument) -> Iterator[tuple[str, int, int]]:
    """(heading path, start, end) of each part of the text under one heading (the part before the first
    heading goes under the title)."""
    text = document.text
    trail: list[tuple[int, str]] = []  # (level, heading) of the headings above the current position
    start = 0
    heading = document.title
    for match in _HEADING.finditer(text):
        if match.start() > start:
            yield heading, start, match.start()
        level = len(match.group(1))
        trail = [(lvl, h) for lvl, h in trail if lvl < level] + [(level, match.group(2))]
        heading = " > ".join([document.title, *(h for _, h in trail)])
        start = match.start()
    if start < len(text):
        yield heading, start, len(text)


def _paragraphs(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Spans of the non-blank paragraphs in text[start:end], whitespace around them left out."""
    at = start
    for gap in _BLANK_LINES.finditer(text, start, end):
        yield from _trimmed(text, at, gap.start())
        at = gap.end()
    yield from _trimmed(text, at, end)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def _packed(document: SourceDocument, limits: ChunkLimits) -> Iterator[tuple[str, int, int]]:
    """Consecutive paragraphs of one section joined while they fit `max_chars` (a chunk under `min_chars` takes
    the next paragraph even past it, to be split again by `_bounded`)."""
    for heading, start, end in _sections(document):
        current: tuple[int, int] | None = None
        for p_start, p_end in _paragraphs(document.text, start, end):
            if current is None:
                current = (p_start, p_end)
            elif p_end - current[0] <= limits.max_chars or current[1] - current[0] < limits.min_chars:
                current = (current[0], p_end)
            else:
                yield heading, *current
                current = (p_start, p_end)
        if current is not None:
            yield heading, *current


def _bounded(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """text[start:end] cut into spans of at most `max_chars`, at the last sentence end or whitespace that fits."""
    while end - start > max_chars:
        limit = start + max_chars
        cut = _last_break(text, start, limit)
        yield from _trimmed(text, start, cut)
        start = cut
        while start < end and text[start].isspace():
            start += 1
    yield from _trimmed(text, start, end)


def _last_break(text: str, start: int, limit: int) -> int:
    """The best cut in (start, limit]: after the last sentence end, else at the last whitespace, else `limit`."""
    window = text[start:limit]
    sentence = [m.start() for m in _SENTENCE_END.finditer(window)]
    if sentence and sentence[-1] > 0:
        return start + sentence[-1]
    space = max(window.rfind(" "), window.rfind("\n"))
    return start + space if space > 0 else limit
