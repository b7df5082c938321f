"""Routing hints are checked at the edge: unknown keys, malformed routes and bad values are refused."""

from __future__ import annotations

import pytest

from cag.errors import InvalidFieldError
from cag.router.core import hints_of


def test_known_keys_are_kept_and_rule_values_casefolded() -> None:
    hints = hints_of({"route": "billing", "intent": "Refund", "product_area": "API", "workflow_state": "open"})
    assert hints.route == "billing"
    assert dict(hints.values) == {"intent": "refund", "product_area": "api", "workflow_state": "open"}


@pytest.mark.parametrize(
    ("metadata", "field", "words"),
    [
        ({"itnent": "billing"}, "metadata", "'itnent' is not a routing hint"),
        ({"Route": "billing"}, "metadata", "is not a routing hint"),
        ({"route": "Billing!"}, "metadata.route", "malformed"),
        ({"route": ""}, "metadata.route", "malformed"),
        ({"intent": ""}, "metadata.intent", "required"),
        ({"intent": "x" * 129}, "metadata.intent", "at most 128"),
        ({"product_area": "a\x00b"}, "metadata.product_area", "control character"),
    ],
)
def test_bad_hints_are_refused(metadata: dict[str, str], field: str, words: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        hints_of(metadata)
    assert caught.value.field == field
    assert words in str(caught.value)
