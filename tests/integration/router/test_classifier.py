"""The classifier step with the real MiniLM (bundled offline): it picks the route whose description the query is
about, above the threshold, and stays below it for a query about none of them."""

from __future__ import annotations

import pytest

from cag.router.classifier import MiniLMClassifier
from cag.router.core import Router
from cag.router.core.chains import Principal
from cag.router.core.decision import Basis
from cag.router.core.hints import hints_of
from cag.router.core.router import Ask
from cag.router.core.rules import RouteInfo, RuleSet

ROUTES = [
    RouteInfo(route="billing", description="Refunds, invoices, payment methods and membership fees."),
    RouteInfo(route="shipping", description="Carriers, delivery times, order cut-off times and tracking parcels."),
    RouteInfo(route="api", description="The REST API: endpoints, authentication, rate limits and error codes."),
]


@pytest.fixture(scope="module")
def classifier() -> MiniLMClassifier:
    return MiniLMClassifier.load()


@pytest.mark.parametrize(
    ("query", "route"),
    [
        ("I want my money back, how do refunds work?", "billing"),
        ("When will my parcel arrive if I order today?", "shipping"),
        ("Which HTTP status do I get when I send too many requests?", "api"),
    ],
)
def test_the_classifier_picks_the_route_the_query_is_about(
    classifier: MiniLMClassifier, query: str, route: str
) -> None:
    router = Router(classifier, threshold=0.3)
    ask = Ask(tenant_id="acme", query=query, hints=hints_of({}), principal=Principal(tenant_id="acme"))
    choice = router.choose(ask, RuleSet("acme", 1, (), ROUTES))
    assert (choice.route, choice.basis) == (route, Basis.CLASSIFIER)
    assert 0.3 <= choice.confidence <= 1.0


def test_a_query_about_none_of_them_falls_back(classifier: MiniLMClassifier) -> None:
    router = Router(classifier, threshold=0.5)
    ask = Ask(
        tenant_id="acme", query="Who painted the Mona Lisa?", hints=hints_of({}), principal=Principal(tenant_id="acme")
    )
    choice = router.choose(ask, RuleSet("acme", 1, (), ROUTES))
    assert (choice.route, choice.basis) == ("", Basis.NONE)
    assert choice.confidence < 0.5
