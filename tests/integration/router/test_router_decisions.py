"""Explain over gRPC on real rules and published modules: the order of decision, the ACL on the chain by the
caller's token, and bad input answered with clear statuses while the router keeps serving."""

from __future__ import annotations

import grpc
import pytest

from cag.auth import ALL_TENANTS, Scope
from cag.rpc.errors import error_details
from cag.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.router.conftest import MODULES, Stack

ACME_BILLING = ["shared-root", "acme-billing"]


@pytest.mark.parametrize(
    ("query", "metadata", "route", "basis", "rule_id"),
    [
        ("how do invoices work", {"route": "billing"}, "billing", common_pb2.ROUTE_BASIS_METADATA, ""),
        ("anything at all", {"intent": "REFUND"}, "billing", common_pb2.ROUTE_BASIS_METADATA, "refund-intent"),
        # The metadata rule comes first although a keyword rule listed before it matches the query too.
        ("my salary", {"intent": "refund"}, "billing", common_pb2.ROUTE_BASIS_METADATA, "refund-intent"),
        ("Where is my Invoice?", {}, "billing", common_pb2.ROUTE_BASIS_RULE, "invoice-words"),
        ("salary and invoice", {}, "payroll", common_pb2.ROUTE_BASIS_RULE, "salary-words"),
    ],
    ids=["route-named", "metadata-rule", "metadata-before-keywords", "keyword-rule", "first-keyword-rule"],
)
async def test_the_order_of_decision_over_real_rules(
    stack: Stack, query: str, metadata: dict[str, str], route: str, basis: int, rule_id: str
) -> None:
    token = stack.token(workspace="finance", user="alice")
    decision = await stack.explain(query, metadata=metadata, token=token)
    assert (decision.route, decision.basis, decision.rule_id) == (route, basis, rule_id)
    assert (decision.path, decision.rule_version, decision.confidence) == (common_pb2.ANSWER_PATH_MODULE, 1, 1.0)
    assert decision.module_ids[0] == "shared-root" and decision.module_version == 1
    assert decision.tenant_id == "acme" and decision.decision_id


async def test_the_chain_is_root_first_and_each_decision_has_its_own_id(stack: Stack) -> None:
    first = await stack.explain("an invoice")
    second = await stack.explain("an invoice")
    assert list(first.module_ids) == ACME_BILLING
    assert first.decision_id != second.decision_id


async def test_nothing_matching_takes_the_fallback_path(stack: Stack) -> None:
    decision = await stack.explain("tell me a joke")
    assert (decision.route, decision.path, decision.basis) == (
        "",
        common_pb2.ANSWER_PATH_FALLBACK,
        common_pb2.ROUTE_BASIS_NONE,
    )
    assert (list(decision.module_ids), decision.module_version, decision.rule_version) == ([], 0, 1)
    assert decision.reason == "no rule matched; serving fallback"


async def test_a_route_without_a_published_module_takes_the_fallback_path(stack: Stack) -> None:
    decision = await stack.explain("the roadmap")
    assert (decision.route, decision.path, decision.basis) == (
        "roadmap",
        common_pb2.ANSWER_PATH_FALLBACK,
        common_pb2.ROUTE_BASIS_NONE,
    )
    assert "has no published module" in decision.reason and not decision.module_ids


async def test_a_public_parent_serves_every_tenant_under_its_own_chain(stack: Stack) -> None:
    decision = await stack.explain("invoices", metadata={"route": "billing"}, token=stack.token("globex"))
    assert (decision.tenant_id, list(decision.module_ids)) == ("globex", ["shared-root", "globex-billing"])


@pytest.mark.parametrize(
    ("who", "route", "served"),
    [
        ({"workspace": "finance"}, "payroll", True),
        ({"workspace": "sales"}, "payroll", False),
        ({}, "payroll", False),
        ({"user": "alice"}, "diary", True),
        ({"workspace": "finance", "user": "bob"}, "diary", False),
        ({}, "diary", False),
        ({"user": "bob"}, "billing", True),
    ],
)
async def test_workspace_and_user_modules_serve_only_their_workspace_and_user(
    stack: Stack, who: dict[str, str], route: str, served: bool
) -> None:
    request = {"metadata": {"route": route}, "token": stack.token(**who)}
    if served:
        assert (await stack.explain("q", **request)).path == common_pb2.ANSWER_PATH_MODULE  # type: ignore[arg-type]
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.explain("q", **request)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not any(m.module_id in (caught.value.details() or "") for m, _ in MODULES)  # no module is named


async def test_an_admin_token_for_several_tenants_names_the_tenant(stack: Stack) -> None:
    admin = stack.registry.token("service:ops", [Scope.ADMIN], [ALL_TENANTS])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.explain("an invoice", token=admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    decision = await stack.explain("an invoice", token=admin, tenant_id="globex", metadata={"route": "billing"})
    assert list(decision.module_ids) == ["shared-root", "globex-billing"]


BAD = [
    # (name, token, request fields, status, reason, field)
    ("no-token", "none", {}, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", ""),
    ("expired-token", "expired", {}, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", ""),
    ("forged-token", "forged", {}, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", ""),
    ("other-tenant", "alice", {"tenant_id": "globex"}, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", ""),
    ("bad-tenant", "alice", {"tenant_id": "Acme Corp"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "tenant_id"),
    ("empty-query", "alice", {"query": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "query"),
    ("blank-query", "alice", {"query": " \n\t "}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "query"),
    ("oversized", "alice", {"query": "x" * 4097}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "query"),
    ("nul", "alice", {"query": "an invoice\x00"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "query"),
    ("unknown-key", "alice", {"metadata": {"colour": "blue"}}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "metadata"),
    ("bad-hint", "alice", {"metadata": {"intent": "a\x1bb"}}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "metadata.intent"),
    ("unknown-route", "alice", {"metadata": {"route": "nope"}}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "metadata.route"),
    ("bad-sampling", "alice", {"sampling": common_pb2.SamplingParams(top_p=2)}, grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_FIELD", "sampling.top_p"),
]  # fmt: skip


@pytest.mark.parametrize(("token", "fields", "code", "reason", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_bad_input_gets_a_clear_status_and_the_router_keeps_serving(
    stack: Stack, token: str, fields: dict[str, object], code: grpc.StatusCode, reason: str, field: str
) -> None:
    tokens = {
        "expired": stack.expired_token(),
        "forged": stack.token(user="alice")[:-4] + "AAAA",
        "alice": stack.token(user="alice"),
    }
    request = router_pb2.GenerateRequest(**({"query": "an invoice"} | fields))  # type: ignore[arg-type]
    async with grpc.aio.insecure_channel(stack.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        metadata = () if token == "none" else (("authorization", f"Bearer {tokens[token]}"),)
        for call in (stub.Explain(request, metadata=metadata), _first(stub.Generate(request, metadata=metadata))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            details = error_details(caught.value)
            assert caught.value.code() == code, caught.value.details()
            assert details is not None and (details.reason, details.field) == (reason, field)
            assert "acme-billing" not in (caught.value.details() or "")
    assert stack.pool.requests == []  # nothing reached the cache pool
    assert (await stack.explain("an invoice")).path == common_pb2.ANSWER_PATH_MODULE


async def _first(call: grpc.aio.UnaryStreamCall[router_pb2.GenerateRequest, common_pb2.GenerateResponse]) -> None:
    async for _ in call:
        pass
