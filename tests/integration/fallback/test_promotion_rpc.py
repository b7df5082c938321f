"""Candidates and Review over gRPC (the fallback's servicer, real Postgres, MiniLM, the promotion client): listed
most frequent first and paged, a tenant's candidates hidden from another tenant, a second review
FAILED_PRECONDITION, an approval without a route INVALID_ARGUMENT, an unknown candidate NOT_FOUND."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import grpc
import pytest

from cag.auth import Scope
from cag.auth.tokens import issue_token, load_key
from cag.fallback.promotion import Promotion
from cag.rpc.clients.promotion import PromotionClient
from cag.rpc.errors import error_details
from cag.v1 import fallback_pb2
from tests.infra_fixtures import Infra
from tests.integration.fallback.conftest import REFUND_QUERIES, count_served

T = TypeVar("T")


def client(infra: Infra, address: str, tenant: str, *scopes: Scope) -> PromotionClient:
    token = issue_token(load_key(infra.auth_key_file), f"user:{tenant}-reviewer", scopes, [tenant], 600)
    return PromotionClient(address, token=token)


async def call(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def test_candidates_are_listed_most_frequent_first_paged_and_per_tenant(
    infra: Infra, promotion_server: tuple[str, Promotion]
) -> None:
    address, promotion = promotion_server
    await count_served(promotion, [*REFUND_QUERIES, "refund timing?"], "c-refunds")
    await count_served(promotion, ["Which carrier ships to Norway?"] * 3, "c-shipping")
    await count_served(promotion, ["Globex invoice copy?"] * 3, "c-globex", tenant="globex")
    with client(infra, address, "acme", Scope.READ) as acme:
        listed = await call(
            lambda: list(acme.candidates(fallback_pb2.CandidatesRequest(tenant_id="acme", page_size=1)))
        )
        assert [(c.count, c.state) for c in listed] == [
            (4, fallback_pb2.CANDIDATE_STATE_PROPOSED),
            (3, fallback_pb2.CANDIDATE_STATE_PROPOSED),
        ]
        assert listed[1].queries == ["Which carrier ships to Norway?"] and listed[1].evidence_ids == ["c-shipping"]
        everything_readable = await call(lambda: list(acme.candidates(fallback_pb2.CandidatesRequest())))
        assert {c.tenant_id for c in everything_readable} == {"acme"}
        with pytest.raises(grpc.RpcError) as denied:
            await call(lambda: list(acme.candidates(fallback_pb2.CandidatesRequest(tenant_id="globex"))))
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        none_approved = fallback_pb2.CandidatesRequest(state=fallback_pb2.CANDIDATE_STATE_APPROVED)
        assert await call(lambda: list(acme.candidates(none_approved))) == []


async def test_a_second_review_is_failed_precondition(infra: Infra, promotion_server: tuple[str, Promotion]) -> None:
    address, promotion = promotion_server
    await count_served(promotion, REFUND_QUERIES, "c-refunds")
    with client(infra, address, "acme", Scope.READ, Scope.WRITE) as acme:
        [candidate] = await call(lambda: list(acme.candidates(fallback_pb2.CandidatesRequest())))
        reject = fallback_pb2.ReviewRequest(candidate_id=candidate.id, approve=False, reviewer="alice", comment="dup")
        response = await call(lambda: acme.review(reject))
        assert response.candidate.state == fallback_pb2.CANDIDATE_STATE_REJECTED and response.compile_job_id == ""
        with pytest.raises(grpc.RpcError) as again:
            await call(lambda: acme.review(reject))
        assert again.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        details = error_details(again.value)
        assert details is not None and details.reason == "CANDIDATE_NOT_REVIEWABLE"
        assert "already reviewed" in (again.value.details() or "")


async def test_bad_reviews_get_typed_statuses(infra: Infra, promotion_server: tuple[str, Promotion]) -> None:
    address, promotion = promotion_server
    await count_served(promotion, REFUND_QUERIES, "c-refunds")
    with client(infra, address, "acme", Scope.READ, Scope.WRITE) as acme:
        [candidate] = await call(lambda: list(acme.candidates(fallback_pb2.CandidatesRequest())))
        cases = [
            (fallback_pb2.ReviewRequest(candidate_id=candidate.id, approve=True), grpc.StatusCode.INVALID_ARGUMENT),
            (fallback_pb2.ReviewRequest(candidate_id="nope", approve=False), grpc.StatusCode.NOT_FOUND),
            (fallback_pb2.ReviewRequest(approve=False), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for request, code in cases:
            with pytest.raises(grpc.RpcError) as refused:
                await call(lambda request=request: acme.review(request))  # type: ignore[misc]
            assert refused.value.code() is code, request
    with client(infra, address, "acme", Scope.READ) as reader, pytest.raises(grpc.RpcError) as denied:
        await call(lambda: reader.review(fallback_pb2.ReviewRequest(candidate_id=candidate.id, approve=False)))
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
