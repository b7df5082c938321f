"""The knowledge source an approved candidate is compiled from: its evidence, and what a golden check may assert.

The documents are the evidence chunks' text grouped per source document (in document order, overlapping
chunks merged by their offsets), one file per document. The golden cases come from the candidate's
representative queries and the answers the fallback gave them. Those answers were never checked against a
truth, so asserting them whole would only test that the module repeats the fallback's wording. What can
honestly be asserted is what the answer took from the evidence: runs of at least `min_words` words that the
answer and the evidence share verbatim. A module built from that evidence should state the same facts; a
query whose answer shares no such run with the evidence gets no golden case (there is nothing grounded to
check) unless the reviewer named the facts its answer must hold. The registry publishes no module without
passed golden checks, so a candidate with no case at all is not compiled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MIN_FACT_WORDS = 3
MAX_FACTS_PER_QUERY = 2
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, kw_only=True)
class EvidenceChunk:
    chunk_id: str
    source_uri: str
    path: str  # the document's path inside its source
    title: str
    start: int  # character offsets of the chunk in the document
    end: int
    text: str


@dataclass(frozen=True, kw_only=True)
class SourceFile:
    name: str  # file name inside the promoted source folder
    text: str


def source_files(chunks: Sequence[EvidenceChunk]) -> list[SourceFile]:
    """One markdown file per source document, its chunks in offset order (overlaps cut), named uniquely."""
    documents: dict[tuple[str, str], list[EvidenceChunk]] = {}
    for chunk in chunks:
        documents.setdefault((chunk.source_uri, chunk.path), []).append(chunk)
    files = []
    for number, ((_, path), parts) in enumerate(sorted(documents.items()), start=1):
        ordered = sorted(parts, key=lambda c: (c.start, -c.end))
        title = ordered[0].title or path
        body = "\n\n".join(_merged(ordered))
        files.append(
            SourceFile(name=f"{number:02d}-{_slug(path)}.md", text=f"---\ntitle: {_one_line(title)}\n---\n{body}\n")
        )
    return files


def _merged(chunks: Sequence[EvidenceChunk]) -> list[str]:
    """The document's covered spans: chunks that overlap or touch are joined (the part an earlier chunk already
    covered cut), separate spans are paragraphs of their own. `chunks` are in (start, -end) order."""
    spans: list[str] = []
    covered = -1
    for chunk in chunks:
        if chunk.end <= covered:
            continue
        if chunk.start <= covered:
            spans[-1] += chunk.text[covered - chunk.start :]
        else:
            spans.append(chunk.text)
        covered = chunk.end
    return [s.strip() for s in spans if s.strip()]


def _slug(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return _UNSAFE.sub("-", stem).strip("-") or "document"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def grounded_facts(answer: str, evidence: str, *, min_words: int = MIN_FACT_WORDS) -> list[str]:
    """Maximal runs of >= `min_words` words of `answer` that occur verbatim (case-insensitive) in `evidence`,
    longest first, each in the answer's spelling."""
    words = answer.split()
    folded = [w.casefold() for w in words]
    haystack = " " + " ".join(evidence.split()).casefold() + " "
    facts: list[str] = []
    i = 0
    while i < len(words):
        end = i
        while end < len(words) and f" {' '.join(folded[i : end + 1])} " in haystack:
            end += 1
        if end - i >= min_words:
            facts.append(" ".join(words[i:end]))
            i = end
        else:
            i += 1
    return sorted(facts, key=lambda f: -len(f.split()))


def golden_cases(
    queries: Sequence[tuple[str, str]],
    evidence: str,
    *,
    reviewer_facts: Sequence[str] = (),
    max_facts: int = MAX_FACTS_PER_QUERY,
) -> list[dict[str, object]]:
    """golden.json entries for (query, fallback answer) pairs: each query with the facts its answer drew from the
    evidence, or else the reviewer's facts; queries with neither are left out."""
    cases: list[dict[str, object]] = []
    for query, answer in queries:
        facts = grounded_facts(answer, evidence)[:max_facts] or list(reviewer_facts)
        if facts:
            cases.append({"question": query, "expect": facts})
    return cases
