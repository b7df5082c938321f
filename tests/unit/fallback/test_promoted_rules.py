"""The rule set an approval puts: the tenant's rules kept, the candidate's keyword rule appended or replaced."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cag.errors import InvalidFieldError
from cag.fallback.approval import PromotionRefusedError, promoted_rules
from cag.fallback.core.candidates import Candidate, ClusteringPolicy, ServedFallback, absorb, start
from cag.fallback.promotion_rpc import page_of
from cag.v1 import fallback_pb2, registry_pb2

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def candidate(*queries: str, candidate_id: str = "abc") -> Candidate:
    policy = ClusteringPolicy(propose_at=1)

    def one(q: str, i: int) -> ServedFallback:
        return ServedFallback(
            event_id=f"e{i}", tenant_id="acme", query=q, embedding=(1.0, 0.0), evidence_ids=("c1",), answer="a",
            served_at=T0,
        )  # fmt: skip

    c = start(candidate_id, one(queries[0], 0), policy)
    for i, q in enumerate(queries[1:], start=1):
        c = absorb(c, one(q, i), policy)
    return c


CURRENT = registry_pb2.RouteRuleSet(
    tenant_id="acme",
    version=4,
    rules=[registry_pb2.RouteRule(rule_id="billing", route="billing", keywords=["invoice"])],
    routes=[registry_pb2.RouteInfo(route="billing", description="Invoices and payments", priority=3)],
)


def test_the_rule_is_appended_after_the_tenants_rules_and_its_route_listed() -> None:
    c = candidate("How long does a refund take?", "refund processing time", "when is my refund paid")
    rules, routes = promoted_rules(CURRENT, c, "refunds")
    assert [(r.rule_id, r.route, list(r.keywords)) for r in rules] == [
        ("billing", "billing", ["invoice"]),
        ("promoted-abc", "refunds", ["refund"]),
    ]
    assert [i.route for i in routes] == ["billing", "refunds"]
    assert routes[0].priority == 3
    assert routes[1].description.startswith("Questions such as: How long does a refund take?")


def test_approving_again_replaces_the_candidates_rule_and_keeps_a_listed_route() -> None:
    c = candidate("refund window", "refund window?")
    rules, routes = promoted_rules(CURRENT, c, "billing")
    again = registry_pb2.RouteRuleSet(tenant_id="acme", version=5, rules=rules, routes=routes)
    rules2, routes2 = promoted_rules(again, c, "billing")
    assert [r.rule_id for r in rules2] == ["billing", "promoted-abc"]
    assert [i.route for i in routes2] == ["billing"]


def test_queries_without_a_topic_word_are_refused() -> None:
    with pytest.raises(PromotionRefusedError, match="no topic word"):
        promoted_rules(CURRENT, candidate("what is it?", "how do you do"), "refunds")


def test_candidates_paging_is_checked() -> None:
    assert page_of(fallback_pb2.CandidatesRequest()) == (None, 0, 50)
    request = fallback_pb2.CandidatesRequest(state=fallback_pb2.CANDIDATE_STATE_APPROVED, page_size=5, page_token="10")
    state, offset, limit = page_of(request)
    assert (state.value if state else None, offset, limit) == ("approved", 10, 5)
    with pytest.raises(InvalidFieldError, match="page_token"):
        page_of(fallback_pb2.CandidatesRequest(page_token="-1"))
    with pytest.raises(InvalidFieldError, match="page_size"):
        page_of(fallback_pb2.CandidatesRequest(page_size=501))
