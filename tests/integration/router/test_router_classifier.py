"""The router app with its classifier enabled (the real MiniLM, loaded offline): a query no rule matches is
routed by its similarity to the routes' descriptions, at or above the threshold from the settings."""

from __future__ import annotations

from typing import Any

import pytest

from cag.v1 import common_pb2
from tests.integration.router.conftest import Stack

THRESHOLD = 0.3


@pytest.fixture
def router_overrides() -> dict[str, Any]:
    return {"classifier_enabled": True, "classifier_threshold": THRESHOLD}


async def test_a_query_no_rule_matches_is_routed_by_the_classifier(stack: Stack) -> None:
    decision = await stack.explain("Can I get a refund on my last payment?")
    assert (decision.route, decision.basis, decision.path) == (
        "billing",
        common_pb2.ROUTE_BASIS_CLASSIFIER,
        common_pb2.ANSWER_PATH_MODULE,
    )
    assert THRESHOLD <= decision.confidence <= 1.0 and decision.rule_id == ""
    assert decision.reason.startswith("classifier ")
    # Below the threshold: fallback, with the classifier's best score as the confidence.
    unrelated = await stack.explain("Who painted the Mona Lisa?")
    assert (unrelated.route, unrelated.path) == ("", common_pb2.ANSWER_PATH_FALLBACK)
    assert unrelated.confidence < THRESHOLD
