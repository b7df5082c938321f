"""Keywords and rule ids of the route rule an approved candidate adds."""

from __future__ import annotations

import re

from cag.fallback.core.promotion_rule import content_words, promotion_keywords, promotion_rule_id


def test_content_words_drop_question_words_short_words_and_numbers() -> None:
    assert content_words("How do I get a refund for my order 1234?") == ["refund", "order"]
    assert content_words("What's the restocking-fee? The FEE!") == ["what's", "restocking-fee", "fee"]


def test_keywords_are_the_words_at_least_half_of_the_queries_share_most_shared_first() -> None:
    queries = [
        "How long does a refund take?",
        "refund processing time",
        "When will my refund arrive",
        "how long for processing",
    ]
    # refund: 3 of 4; processing: 2 of 4; long: 2 of 4 (first used before processing); the rest: 1 of 4.
    assert promotion_keywords(queries) == ("refund", "long", "processing")


def test_a_single_query_gives_its_content_words_up_to_the_limit() -> None:
    assert promotion_keywords(["warranty claim for broken laptop screen hinge"], limit=3) == (
        "warranty",
        "claim",
        "broken",
    )


def test_queries_of_stopwords_only_give_no_keyword() -> None:
    assert promotion_keywords(["what is it?", "how do you do"]) == ()


def test_rule_ids_are_valid_registry_rule_ids() -> None:
    rule = promotion_rule_id("3F2A9C1E-0D4B-4C5A-9E7F-111122223333")
    assert rule == "promoted-3f2a9c1e-0d4b-4c5a-9e7f-111122223333"
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", promotion_rule_id("x" * 100))
