"""The evaluation set's loader and answer checks (normalization, key phrases, exact match), and the shipped set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cag.bench.evalset import (
    NO_ROUTE,
    AnswerCheck,
    EvalSetError,
    QuestionType,
    exact_form,
    load_questions,
    normalize,
)
from cag.canonical import load_source
from cag.cli.routes_cmd import read_rules_file

EVAL = Path(__file__).parents[3] / "examples" / "eval"


def test_normalize_folds_case_unicode_separators_and_whitespace() -> None:
    assert normalize("  The  ＢＲＩＳＫ motor:\n1,200 Watts ") == "the brisk motor: 1200 watts"


def test_exact_form_drops_punctuation_and_articles() -> None:
    assert exact_form("The answer is: an Orbit!") == "answer is orbit"


def test_a_phrase_matches_whole_words_only() -> None:
    check = AnswerCheck(phrases=(("60",),))
    assert check.passes("Tokens expire after 60 minutes.")
    assert not check.passes("The limit is 600 requests per minute.")
    assert AnswerCheck(phrases=(("$4",),)).passes("Gift wrapping costs $4.")
    assert not AnswerCheck(phrases=(("$4",),)).passes("Gift wrapping costs $4.50 per item.")
    assert not AnswerCheck(phrases=(("5",),)).passes("It takes 2.5 days.")


def test_every_phrase_is_required_and_any_alternative_satisfies_one() -> None:
    check = AnswerCheck(phrases=(("FedEx",), ("1 pm", "13:00")))
    assert check.passes("Express ships with fedex; the cut-off is 13:00 Eastern.")
    assert not check.passes("Express ships with FedEx.")


def test_phrases_match_across_case_and_thousands_separators() -> None:
    assert AnswerCheck(phrases=(("1200 watt",),)).passes("It has a 1,200 WATT motor.")
    assert AnswerCheck(phrases=(("$14.99",),)).passes("Express shipping costs $14.99.")


def test_exact_match_compares_the_whole_normalized_answer() -> None:
    check = AnswerCheck(exact="FedEx")
    assert check.passes(" fedex. ")
    assert not check.passes("It is FedEx.")


def _write(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(entries))
    return path


def test_loader_reads_questions_with_their_routes_types_and_checks(tmp_path: Path) -> None:
    path = _write(tmp_path, [
        {"id": "a", "route": "billing", "type": "two_section", "question": "Q?", "phrases": ["x", ["y", "z"]]},
        {"id": "b", "route": "none", "type": "not_covered", "question": "R?", "exact": "w"},
    ])  # fmt: skip
    first, second = load_questions(path, routes=["billing"])
    assert (first.route, first.type, first.check.phrases) == ("billing", QuestionType.TWO_SECTION, (("x",), ("y", "z")))
    assert first.covered and not second.covered and second.check.exact == "w"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "a", "route": "billing", "type": "single_section", "question": "Q?"}, "exactly one of"),
        ({"id": "a", "route": "billing", "type": "single_section", "question": "Q?", "phrases": []}, "non-empty list"),
        ({"id": "a", "route": "billing", "type": "odd", "question": "Q?", "phrases": ["x"]}, "type must be one of"),
        ({"id": "a", "route": NO_ROUTE, "type": "single_section", "question": "Q?", "phrases": ["x"]}, "goes with"),
        ({"id": "a", "route": "hr", "type": "single_section", "question": "Q?", "phrases": ["x"]}, "is not one of"),
        ({"route": "billing", "type": "single_section", "question": "Q?", "phrases": ["x"]}, "missing id"),
    ],
)
def test_loader_refuses_a_malformed_question_naming_it(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    with pytest.raises(EvalSetError, match=message):
        load_questions(_write(tmp_path, [entry]), routes=["billing"])


def test_loader_refuses_duplicate_ids(tmp_path: Path) -> None:
    entry = {"id": "a", "route": "billing", "type": "single_section", "question": "Q?", "phrases": ["x"]}
    with pytest.raises(EvalSetError, match="more than once"):
        load_questions(_write(tmp_path, [entry, entry]))


def test_the_shipped_set_has_five_domains_sixty_questions_and_every_type() -> None:
    _, _, routes = read_rules_file(EVAL / "routes.yaml")
    names = [r.route for r in routes]
    questions = load_questions(EVAL / "questions.json", names)
    assert len(names) >= 5 and len(questions) >= 60
    assert {q.type for q in questions} == set(QuestionType)
    assert {q.route for q in questions} == {*names, NO_ROUTE}
    for name in names:  # every routed domain is a source folder (with golden questions) the compiler can load
        assert load_source(EVAL / "knowledge" / name).golden
