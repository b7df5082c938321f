"""Generate through the router (against the scripted cache pool of conftest.py) and the route snapshot kept
current from the real registry: its Watch feed, cag.routes.updated on NATS, the audit of each decision, and
serving from the snapshot while the registry is down."""

from __future__ import annotations

import grpc
import pytest

from cag.errors import ModuleNotServableError, OverloadedError
from cag.rpc.errors import error_details
from cag.v1 import common_pb2, registry_pb2
from tests.infra_fixtures import Infra
from tests.integration.router.conftest import ACME_RULES, BILLING_SOURCE, Stack, child, eventually

ACME_BILLING = ["shared-root", "acme-billing"]
GREEDY = common_pb2.SamplingParams(max_new_tokens=8, seed=3)


async def test_generate_sends_the_decision_then_the_pools_tokens_then_the_summary(stack: Stack) -> None:
    received, error = await stack.generate("Where is my invoice?", sampling=GREEDY)
    assert error is None
    assert [r.WhichOneof("event") for r in received] == ["decision", "token", "token", "token", "done"]
    decision, done = received[0].decision, received[-1].done
    assert (decision.route, list(decision.module_ids), decision.rule_id) == ("billing", ACME_BILLING, "invoice-words")
    assert "".join(r.token.text for r in received[1:-1]) == "Refunds take 5 days."
    assert done.path == common_pb2.ANSWER_PATH_MODULE
    routed = [s for s in stack.spans.get_finished_spans() if s.name == "router.route"]
    assert done.trace_id in {format(s.context.trace_id, "032x") for s in routed}  # the router's own trace
    [(caller, asked)] = stack.pool.requests
    assert caller.subject == "service:router"  # the router's own identity, never the end user's token
    assert (list(asked.module_ids), asked.tenant_id, asked.route_priority) == (ACME_BILLING, "acme", 7)
    assert (asked.query, asked.sampling) == ("Where is my invoice?", GREEDY)


async def test_each_served_decision_lands_in_the_registry_audit_trail(stack: Stack) -> None:
    received, _ = await stack.generate("Where is my invoice?")
    decision = received[0].decision

    async def audited() -> bool:
        return any(d.event_id == decision.decision_id for d in await stack.store.route_decisions("acme"))

    await eventually(audited, "the decision in the registry's audit trail")
    [recorded] = await stack.store.route_decisions("acme")
    assert (recorded.route, recorded.path, recorded.module_ids) == ("billing", "module", tuple(ACME_BILLING))
    assert (recorded.module_version, recorded.rule) == (1, "invoice-words")


async def test_a_module_the_pool_finds_not_servable_takes_the_fallback_path(stack: Stack) -> None:
    stack.pool.error = ModuleNotServableError("module acme-billing is stale", module="acme-billing", state="stale")
    received, error = await stack.generate("Where is my invoice?")
    assert [r.WhichOneof("event") for r in received] == ["decision"]
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    details = error_details(error)
    assert details is not None and details.reason == "FALLBACK_UNAVAILABLE"
    assert "acme-billing" not in (error.details() or "")


async def test_a_query_without_a_route_while_the_fallback_service_is_down_is_unavailable_naming_it(
    stack: Stack,
) -> None:
    received, error = await stack.generate("tell me a joke")
    assert [r.WhichOneof("event") for r in received] == ["decision"]
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    details = error_details(error)
    assert details is not None and details.reason == "FALLBACK_UNAVAILABLE"
    assert stack.router.settings.fallback_address in (error.details() or "")
    assert "no rule matched" in (error.details() or "")


async def test_other_pool_errors_reach_the_client_with_their_own_status(stack: Stack) -> None:
    stack.pool.error = OverloadedError("the engine queue is full", retry_after_s=2.0)
    received, error = await stack.generate("Where is my invoice?")
    assert [r.WhichOneof("event") for r in received] == ["decision"]
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(error)
    assert details is not None and details.reason == "OVERLOADED"


async def test_a_stale_source_takes_the_fallback_path_until_a_rebuilt_module_is_published(stack: Stack) -> None:
    changed = registry_pb2.SourceTrigger(tenant_id="acme", source_uri=BILLING_SOURCE, new_checksum="ab" * 32)
    await stack.admin.stub.Invalidate(registry_pb2.InvalidateRequest(source=changed, reason="test: source edited"))

    async def falls_back() -> bool:
        return (await stack.explain("an invoice")).path == common_pb2.ANSWER_PATH_FALLBACK

    await eventually(falls_back, "the stale module reaching the router through the feed")
    decision = await stack.explain("an invoice")
    assert decision.reason == "rule invoice-words: module stale: source changed; serving fallback"
    assert (decision.route, list(decision.module_ids), decision.basis) == ("billing", [], common_pb2.ROUTE_BASIS_NONE)
    received, error = await stack.generate("an invoice")
    assert [r.decision.path for r in received] == [common_pb2.ANSWER_PATH_FALLBACK]
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert stack.pool.requests == []  # the stale module was never asked for

    rebuilt = child("acme-billing-2", "acme", "billing")
    await stack.admin.register(rebuilt, source_uri=BILLING_SOURCE)
    await stack.admin.publish(rebuilt.module_id)

    async def serves_again() -> bool:
        return (await stack.explain("an invoice")).path == common_pb2.ANSWER_PATH_MODULE

    await eventually(serves_again, "the rebuilt module reaching the router")
    decision = await stack.explain("an invoice")
    assert (list(decision.module_ids), decision.module_version) == (["shared-root", "acme-billing-2"], 2)


async def test_an_invalidated_public_parent_takes_every_tenants_route_to_fallback(stack: Stack) -> None:
    trigger = registry_pb2.ModuleTrigger(module_id="shared-root")
    await stack.admin.stub.Invalidate(registry_pb2.InvalidateRequest(module=trigger, reason="test"))
    for tenant in ("acme", "globex"):
        token = stack.token(tenant)

        async def falls_back(token: str = token) -> bool:
            decision = await stack.explain("q", metadata={"route": "billing"}, token=token)
            return decision.path == common_pb2.ANSWER_PATH_FALLBACK

        await eventually(falls_back, f"{tenant}'s billing route falling back")
        decision = await stack.explain("q", metadata={"route": "billing"}, token=token)
        assert decision.reason.startswith("route named in the request: module invalidated")


async def test_new_route_rules_reach_the_router_by_event(stack: Stack) -> None:
    assert (await stack.explain("a quote please")).path == common_pb2.ANSWER_PATH_FALLBACK
    rules = registry_pb2.PutRouteRulesRequest()
    rules.CopyFrom(ACME_RULES)
    rules.rules.append(registry_pb2.RouteRule(rule_id="quote-words", route="billing", keywords=["quote"]))
    await stack.admin.stub.PutRouteRules(rules)

    async def has_version_2() -> bool:
        return (await stack.explain("a quote please")).rule_version == 2

    await eventually(has_version_2, "rule set v2 reaching the router")  # the reconcile is minutes away: the event
    decision = await stack.explain("a quote please")
    assert (decision.route, decision.rule_id, decision.path) == (
        "billing",
        "quote-words",
        common_pb2.ANSWER_PATH_MODULE,
    )


async def test_the_router_serves_from_its_snapshot_while_the_registry_is_down(stack: Stack) -> None:
    await stack.registry.server.stop(grace=None)
    decision = await stack.explain("my pay slip", token=stack.token(workspace="finance"))
    assert (decision.route, decision.path) == ("payroll", common_pb2.ANSWER_PATH_MODULE)
    received, error = await stack.generate("Where is my invoice?")
    assert error is None and received[-1].done.path == common_pb2.ANSWER_PATH_MODULE
    # Only a tenant the snapshot has never seen needs the registry: a clear UNAVAILABLE, not INTERNAL.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.explain("an invoice", token=stack.token("initech"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await stack.explain("an invoice")).path == common_pb2.ANSWER_PATH_MODULE


async def test_nats_down_does_not_fail_a_request(stack: Stack, infra: Infra) -> None:
    if infra.nats is None:
        pytest.skip("NATS comes from CAG_NATS_URL: the tests cannot stop it")
    infra.stop_nats()
    try:
        received, error = await stack.generate("Where is my invoice?")
    finally:
        infra.start_nats()
    assert error is None and received[-1].done.path == common_pb2.ANSWER_PATH_MODULE
