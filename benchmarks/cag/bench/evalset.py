"""The evaluation set (`examples/eval/questions.json`): questions with the route that should answer them and a check
of the answer, and the checks themselves (pure: no model, no network).

A check is either a normalized exact match (`exact`: the whole answer, as SQuAD compares answers) or required key
phrases (`phrases`: each must appear in the answer as whole words; an item that is a list is satisfied by any of its
alternatives). Normalization folds case and Unicode forms, drops thousands separators ("1,200" is "1200") and
collapses whitespace; exact matching also drops punctuation and articles.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

NO_ROUTE = "none"  # the expected route of a question no module covers: the fallback path should answer it
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCTUATION = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


class QuestionType(StrEnum):
    SINGLE_SECTION = "single_section"  # one section of one document holds the answer
    TWO_SECTION = "two_section"  # the answer needs facts from two sections
    NOT_COVERED = "not_covered"  # no module holds it; only the long-tail sources do


class EvalSetError(ValueError):
    """The evaluation file is malformed; the message names the file and the entry."""


@dataclass(frozen=True, kw_only=True)
class AnswerCheck:
    """`exact`: the normalized answer must equal it; `phrases`: every item must appear (any of its alternatives)."""

    exact: str | None = None
    phrases: tuple[tuple[str, ...], ...] = ()

    def passes(self, answer: str) -> bool:
        if self.exact is not None:
            return exact_form(answer) == exact_form(self.exact)
        text = normalize(answer)
        return all(any(contains_phrase(text, alt) for alt in item) for item in self.phrases)


@dataclass(frozen=True, kw_only=True)
class EvalQuestion:
    id: str
    question: str
    route: str  # NO_ROUTE when no module covers it
    type: QuestionType
    check: AnswerCheck

    @property
    def covered(self) -> bool:
        return self.route != NO_ROUTE


def normalize(text: str) -> str:
    """Case-folded NFKC text without thousands separators, whitespace collapsed to single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_THOUSANDS.sub("", folded).split())


def exact_form(text: str) -> str:
    """`normalize`, then without punctuation and articles (the SQuAD exact-match form)."""
    bare = _ARTICLES.sub(" ", _PUNCTUATION.sub(" ", normalize(text)))
    return " ".join(bare.split())


def contains_phrase(normalized_text: str, phrase: str) -> bool:
    """True when `phrase` (normalized here) occurs in `normalized_text` as whole words and whole numbers: "60" is
    not in "600", "$4" is not in "$4.50"."""
    words = normalize(phrase)
    if not words:
        return False
    pattern = rf"(?<![\w.]){re.escape(words)}(?![\w]|[.,]\d)"
    return re.search(pattern, normalized_text) is not None


def load_questions(path: Path, routes: Sequence[str] = ()) -> tuple[EvalQuestion, ...]:
    """Read the evaluation file; with `routes`, every expected route must be one of them (or NO_ROUTE)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalSetError(f"{path}: cannot read the evaluation set: {e}") from None
    if not isinstance(entries, list):
        raise EvalSetError(f"{path}: must be a JSON list of questions")
    questions = tuple(_question(path, i, entry) for i, entry in enumerate(entries))
    ids = [q.id for q in questions]
    if duplicate := next((i for i in ids if ids.count(i) > 1), None):
        raise EvalSetError(f"{path}: question id {duplicate!r} appears more than once")
    known = {*routes, NO_ROUTE}
    if routes and (unknown := next((q for q in questions if q.route not in known), None)):
        raise EvalSetError(f"{path}: question {unknown.id}: route {unknown.route!r} is not one of {sorted(known)}")
    return questions


def _question(path: Path, index: int, entry: object) -> EvalQuestion:
    where = f"{path}: question {index}"
    if not isinstance(entry, dict):
        raise EvalSetError(f"{where}: must be an object")
    fields = {"id", "question", "route", "type"}
    if missing := sorted(fields - set(entry)):
        raise EvalSetError(f"{where}: missing {', '.join(missing)}")
    if not all(isinstance(entry[f], str) and entry[f].strip() for f in fields):
        raise EvalSetError(f"{where}: {', '.join(sorted(fields))} must be non-empty strings")
    try:
        kind = QuestionType(entry["type"])
    except ValueError:
        raise EvalSetError(f"{where}: type must be one of {[t.value for t in QuestionType]}") from None
    if (entry["route"] == NO_ROUTE) != (kind is QuestionType.NOT_COVERED):
        raise EvalSetError(f"{where}: route {NO_ROUTE!r} goes with type {QuestionType.NOT_COVERED.value!r} only")
    return EvalQuestion(
        id=entry["id"], question=entry["question"], route=entry["route"], type=kind, check=_check(where, entry)
    )


def _check(where: str, entry: dict[str, object]) -> AnswerCheck:
    exact, phrases = entry.get("exact"), entry.get("phrases")
    if (exact is None) == (phrases is None):
        raise EvalSetError(f"{where}: give exactly one of 'exact' and 'phrases'")
    if exact is not None:
        if not isinstance(exact, str) or not exact_form(exact):
            raise EvalSetError(f"{where}: 'exact' must be a string with words in it")
        return AnswerCheck(exact=exact)
    if not isinstance(phrases, list) or not phrases:
        raise EvalSetError(f"{where}: 'phrases' must be a non-empty list")
    items = tuple(_alternatives(where, item) for item in phrases)
    return AnswerCheck(phrases=items)


def _alternatives(where: str, item: object) -> tuple[str, ...]:
    alternatives = item if isinstance(item, list) else [item]
    if not alternatives or not all(isinstance(a, str) and normalize(a) for a in alternatives):
        raise EvalSetError(f"{where}: a phrase is a non-empty string or a non-empty list of them")
    return tuple(str(a) for a in alternatives)
