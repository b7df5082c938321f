"""The keyword index finds the same first rule as one regular expression per rule would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cag.router.core.rules import KeywordIndex, keyword_pattern

WORDS = ["invoice", "credit", "note", "api", "c++", "e-mail", "Straße", "refund"]
keyword = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)
separator = st.sampled_from([" ", "  ", "\n", "-", ", ", "", "_"])


def first_by_patterns(keywords_by_rule: list[list[str]], query: str) -> int | None:
    for index, keywords in enumerate(keywords_by_rule):
        pattern = keyword_pattern(keywords)
        if pattern is not None and pattern.search(query):
            return index
    return None


@settings(max_examples=500, deadline=None)
@given(
    rules=st.lists(st.lists(keyword, min_size=1, max_size=3), min_size=1, max_size=6),
    parts=st.lists(st.tuples(st.sampled_from([*WORDS, "INVOICE", "Notes", "xapi"]), separator), max_size=8),
)
def test_same_first_rule_as_per_rule_patterns(rules: list[list[str]], parts: list[tuple[str, str]]) -> None:
    query = "".join(word + sep for word, sep in parts)
    assert KeywordIndex(rules).first(query) == first_by_patterns(rules, query)


def test_phrases_match_across_whitespace_only() -> None:
    index = KeywordIndex([["credit note"]])
    assert index.first("a Credit \n Note") == 0
    assert index.first("a credit-note") is None
    assert index.first("credit notes") is None
