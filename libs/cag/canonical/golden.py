"""Golden cases: questions a compiled module must answer, with the facts the answer must contain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cag.errors import SourceError


def _collapse(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, kw_only=True)
class GoldenCase:
    """One question and the substrings its answer must all contain."""

    question: str
    expect: tuple[str, ...]

    def passes(self, answer: str) -> bool:
        """True when every expected fact appears in `answer` (case-insensitive, whitespace-collapsed)."""
        haystack = _collapse(answer)
        return all(_collapse(fact) in haystack for fact in self.expect)


def load_golden(path: Path) -> tuple[GoldenCase, ...]:
    """Read a `golden.json` list of {"question": str, "expect": [str, ...]}; absent file: no cases."""
    if not path.is_file():
        return ()
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, list):
        raise SourceError(f"{path}: must be a JSON list of {{'question', 'expect'}} objects")
    return tuple(_case(item, path=path, index=i) for i, item in enumerate(data))


def _case(item: object, *, path: Path, index: int) -> GoldenCase:
    where = f"{path}: case {index}"
    if not isinstance(item, dict) or set(item) != {"question", "expect"}:
        raise SourceError(f"{where}: must be an object with exactly 'question' and 'expect'")
    question, expect = item["question"], item["expect"]
    if not isinstance(question, str) or not question.strip():
        raise SourceError(f"{where}: 'question' must be a non-empty string")
    valid = isinstance(expect, list) and expect and all(isinstance(e, str) and e.strip() for e in expect)
    if not valid:
        raise SourceError(f"{where}: 'expect' must be a non-empty list of non-empty strings")
    return GoldenCase(question=question.strip(), expect=tuple(expect))
