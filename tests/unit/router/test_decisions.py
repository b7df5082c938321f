"""The order of decision (route named → metadata rules → keyword rules → classifier → fallback), the chain's
state and ACL, and the decision's fields."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cag.acl import AclScope
from cag.errors import InvalidFieldError, PermissionDeniedError
from cag.router.core import (
    AnswerPath,
    Ask,
    Basis,
    ModuleLink,
    Principal,
    RouteEntry,
    RouteInfo,
    Router,
    RouteRule,
    RouteStatus,
    RuleSet,
    hints_of,
)

RULES = RuleSet(
    "acme",
    7,
    rules=[
        RouteRule(rule_id="refunds-in-billing", route="refunds", metadata={"intent": "Refund"}, keywords=("money",)),
        RouteRule(rule_id="billing-intent", route="billing", metadata={"intent": "billing"}),
        RouteRule(rule_id="api-area", route="api", metadata={"product_area": "API", "workflow_state": "open"}),
        RouteRule(rule_id="billing-kw", route="billing", keywords=("invoice", "credit note")),
        RouteRule(rule_id="api-kw", route="api", keywords=("endpoint", "c++")),
    ],
    routes=[
        RouteInfo(route="billing", description="invoices, payments and refunds", priority=5),
        RouteInfo(route="api", description="the public REST API"),
        RouteInfo(route="refunds", description=""),
        RouteInfo(route="unbuilt", description="a route whose module was never published"),
    ],
)


class FixedScores:
    """A classifier that answers fixed scores and records what it was asked."""

    def __init__(self, scores: dict[str, float]) -> None:
        self._scores = scores
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def scores(self, query: str, routes: Sequence[RouteInfo]) -> Sequence[tuple[str, float]]:
        self.asked.append((query, tuple(r.route for r in routes)))
        return [(r.route, self._scores.get(r.route, 0.0)) for r in routes]


def link(
    module_id: str, scope: AclScope = AclScope.TENANT, tenant: str = "acme", principal: str = "", version: int = 1
) -> ModuleLink:
    return ModuleLink(module_id=module_id, version=version, acl_scope=scope, tenant_id=tenant, acl_principal=principal)


def servable(route: str, *chain: ModuleLink, tenant: str = "acme") -> RouteEntry:
    return RouteEntry(
        tenant_id=tenant, route=route, status=RouteStatus.SERVABLE, chain=chain, route_version=chain[-1].version
    )


ENTRIES = {
    "billing": servable("billing", link("system", AclScope.PUBLIC, "public"), link("billing-v3", version=3)),
    "api": servable("api", link("api-v1")),
    "refunds": servable("refunds", link("refunds-v2", version=2)),
    "unbuilt": RouteEntry(tenant_id="acme", route="unbuilt", status=RouteStatus.ABSENT),
}


def ask(query: str, metadata: dict[str, str] | None = None, principal: Principal | None = None) -> Ask:
    hints = hints_of(metadata or {})
    return Ask(tenant_id="acme", query=query, hints=hints, principal=principal or Principal(tenant_id="acme"))


def decide(router: Router, a: Ask, rules: RuleSet = RULES, entries: dict[str, RouteEntry] = ENTRIES):  # type: ignore[no-untyped-def]
    choice = router.choose(a, rules)
    entry = entries.get(choice.route, RouteEntry(tenant_id="acme", route=choice.route, status=RouteStatus.ABSENT))
    return router.settle(a, choice, rules, entry if choice.route else None)


@pytest.mark.parametrize(
    ("query", "metadata", "route", "basis", "rule_id"),
    [
        # The route named in the request wins over every rule.
        ("my invoice", {"route": "api", "intent": "billing"}, "api", Basis.METADATA, ""),
        # Metadata rules before keyword rules, case-insensitive values; all conditions must hold.
        ("the endpoint", {"intent": "BILLING"}, "billing", Basis.METADATA, "billing-intent"),
        ("x", {"product_area": "api", "workflow_state": "Open"}, "api", Basis.METADATA, "api-area"),
        ("an invoice", {"product_area": "api"}, "billing", Basis.RULE, "billing-kw"),
        # A rule with metadata and keywords needs both; then the next rule is tried.
        ("give my money back", {"intent": "refund"}, "refunds", Basis.METADATA, "refunds-in-billing"),
        ("give it back", {"intent": "refund"}, "", Basis.NONE, ""),
        # Keyword rules: whole words, case-insensitive, in set order; phrases across any whitespace.
        ("Where is my INVOICE?", {}, "billing", Basis.RULE, "billing-kw"),
        ("a credit\n  note please", {}, "billing", Basis.RULE, "billing-kw"),
        ("invoices", {}, "", Basis.NONE, ""),
        ("an endpoint for my invoice", {}, "billing", Basis.RULE, "billing-kw"),
        ("the c++ sdk", {}, "api", Basis.RULE, "api-kw"),
        ("the c++sdk", {}, "", Basis.NONE, ""),
        ("nothing relevant", {}, "", Basis.NONE, ""),
    ],
)
def test_order_of_decision(query: str, metadata: dict[str, str], route: str, basis: Basis, rule_id: str) -> None:
    decision = decide(Router(), ask(query, metadata))
    assert (decision.route, decision.basis, decision.rule_id) == (route, basis, rule_id)
    assert decision.rule_version == 7
    assert decision.path is (AnswerPath.MODULE if route else AnswerPath.FALLBACK)


def test_a_served_decision_carries_the_chain_and_the_leaf_version() -> None:
    decision = decide(Router(new_id=lambda: "d-1"), ask("my invoice"))
    assert decision.decision_id == "d-1"
    assert decision.module_ids == ("system", "billing-v3")
    assert (decision.module_version, decision.confidence, decision.priority) == (3, 1.0, 5)
    assert decision.reason == "rule billing-kw"


def test_decision_ids_are_unique() -> None:
    router = Router()
    assert len({decide(router, ask("my invoice")).decision_id for _ in range(1000)}) == 1000


def test_the_classifier_decides_at_or_above_its_threshold_and_only_after_the_rules() -> None:
    classifier = FixedScores({"api": 0.8, "billing": 0.3})
    router = Router(classifier, threshold=0.8)
    decision = decide(router, ask("how do I paginate?"))
    assert (decision.route, decision.basis, decision.confidence, decision.path) == (
        "api",
        Basis.CLASSIFIER,
        0.8,
        AnswerPath.MODULE,
    )
    # Only described routes are scored; a rule's match never reaches the classifier.
    assert classifier.asked == [("how do I paginate?", ("billing", "api", "unbuilt"))]
    decide(router, ask("my invoice"))
    assert len(classifier.asked) == 1


def test_a_classifier_below_its_threshold_falls_back_with_its_score() -> None:
    decision = decide(Router(FixedScores({"api": 0.79}), threshold=0.8), ask("how do I paginate?"))
    assert (decision.route, decision.basis, decision.path, decision.module_ids) == (
        "",
        Basis.NONE,
        AnswerPath.FALLBACK,
        (),
    )
    assert decision.confidence == pytest.approx(0.79)
    assert "0.79 < 0.80" in decision.reason and decision.reason.endswith("serving fallback")


def test_without_a_classifier_nothing_matched_is_fallback() -> None:
    decision = decide(Router(), ask("nothing relevant"))
    assert (decision.route, decision.basis, decision.confidence, decision.module_version) == ("", Basis.NONE, 0.0, 0)
    assert decision.reason == "no rule matched; serving fallback"


def test_a_stale_chain_is_answered_by_fallback_never_served() -> None:
    stale = ENTRIES["billing"].withdrawn("billing-v3", "stale")
    decision = decide(Router(), ask("my invoice"), entries={**ENTRIES, "billing": stale})
    assert (decision.route, decision.basis, decision.rule_id, decision.path) == (
        "billing",
        Basis.NONE,
        "",
        AnswerPath.FALLBACK,
    )
    assert decision.module_ids == ()
    assert decision.reason == "rule billing-kw: module stale: source changed; serving fallback"


def test_a_chosen_route_without_a_published_module_falls_back() -> None:
    decision = decide(Router(), ask("q", {"route": "unbuilt"}))
    assert (decision.route, decision.path) == ("unbuilt", AnswerPath.FALLBACK)
    assert "route unbuilt has no published module" in decision.reason


def test_a_named_route_the_tenant_does_not_have_is_invalid() -> None:
    with pytest.raises(InvalidFieldError) as caught:
        decide(Router(), ask("q", {"route": "no-such-route"}))
    assert caught.value.field == "metadata.route"


def test_a_chain_outside_the_callers_scope_is_denied_without_naming_its_modules() -> None:
    private = servable(
        "api", link("root", AclScope.PUBLIC, "public"), link("ws-api", AclScope.WORKSPACE, principal="sales")
    )
    entries = {**ENTRIES, "api": private}
    with pytest.raises(PermissionDeniedError) as caught:
        decide(
            Router(), ask("the endpoint", principal=Principal(tenant_id="acme", workspace="support")), entries=entries
        )
    assert "ws-api" not in str(caught.value) and "root" not in str(caught.value)
    decision = decide(
        Router(), ask("the endpoint", principal=Principal(tenant_id="acme", workspace="sales")), entries=entries
    )
    assert decision.module_ids == ("root", "ws-api")


def test_among_200_keyword_rules_each_query_takes_the_rule_its_phrase_names() -> None:
    """(How long it takes is `cag bench routing`'s question.)"""
    rules = RuleSet(
        "acme",
        1,
        rules=[
            RouteRule(rule_id=f"r{i}", route=f"route-{i}", keywords=(f"word{i}", f"phrase number {i}"))
            for i in range(200)
        ],
        routes=[RouteInfo(route=f"route-{i}") for i in range(200)],
    )
    entries = {f"route-{i}": servable(f"route-{i}", link(f"m{i}")) for i in range(200)}
    for i in (0, 7, 42, 199):
        decision = decide(Router(), ask(f"a question about phrase   number {i} and more words" * 4), rules, entries)
        assert (decision.route, decision.rule_id, decision.module_ids) == (f"route-{i}", f"r{i}", (f"m{i}",))
