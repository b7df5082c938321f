"""Golden answers are recorded so that stored text can hold them: a model may emit any control character."""

from __future__ import annotations

from cag.compiler.golden import transcript
from cag.identifiers import check_text


def test_control_characters_are_recorded_escaped_and_the_rest_kept() -> None:
    answer = "Refunds:\r within 30 days\x00.\tSee\nbelow\x7f é"
    recorded = transcript(answer)
    assert recorded == "Refunds:\\x0d within 30 days\\x00.\tSee\nbelow\\x7f é"
    assert check_text("golden_results[0].answer", recorded, max_chars=10_000) == recorded


def test_an_answer_without_control_characters_is_recorded_as_it_is() -> None:
    assert transcript("Within 30 days of delivery.") == "Within 30 days of delivery."
