"""The SDK's typed errors from a failed call's status and rich details; retry decisions; stream folding."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from cag.client import (
    CagClientError,
    FallbackUnavailableError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
)
from cag.client.answer import AnswerBuilder
from cag.client.errors import from_rpc_error
from cag.client.request import Sampling, generate_request
from cag.errors import InvalidFieldError, KVCacheFullError
from cag.rpc.errors import status_of
from cag.v1 import common_pb2


class FailedCall(grpc.RpcError):
    """What a failed sync call raises: code, details and trailing metadata."""

    def __init__(self, status: Any) -> None:
        rich = rpc_status.to_status(status)
        self._code, self._details, self._trailing = rich.code, rich.details, rich.trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing


def fallback_down() -> Any:
    """The status the router fails with while no fallback service runs (built by hand: its error class is the
    router's)."""
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="no route matched and fallback is not running")
    info = error_details_pb2.ErrorInfo(reason="FALLBACK_UNAVAILABLE", domain="cag.dev")
    status.details.add().Pack(info)
    return status


def test_error_info_becomes_a_typed_error() -> None:
    error = from_rpc_error(FailedCall(status_of(InvalidFieldError("metadata", "has the unknown key 'intnet'"))))
    assert isinstance(error, InvalidArgumentError)
    assert (error.code, error.reason, error.field) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "metadata")
    assert error.metadata["field"] == "metadata" and "unknown key" in error.message


def test_fallback_unavailable_is_its_own_class() -> None:
    error = from_rpc_error(FailedCall(fallback_down()))
    assert isinstance(error, FallbackUnavailableError) and isinstance(error, UnavailableError)


def test_retry_info_gives_retry_after() -> None:
    status = status_of(KVCacheFullError("queue full"))
    hint = error_details_pb2.RetryInfo()
    hint.retry_delay.FromMilliseconds(1500)
    status.details.add().Pack(hint)
    error = from_rpc_error(FailedCall(status))
    assert isinstance(error, ResourceExhaustedError) and error.retry_after_s == 1.5 and error.reason == "KV_CACHE_FULL"


def test_status_without_details() -> None:
    class Bare(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "failed to connect to all addresses"

        def trailing_metadata(self) -> Any:
            return ()

    error = from_rpc_error(Bare())
    assert type(error) is UnavailableError and error.reason == "UNAVAILABLE" and error.field == ""
    assert str(error) == "failed to connect to all addresses (UNAVAILABLE, UNAVAILABLE)"


def error(code: grpc.StatusCode, reason: str = "", retry_after_s: float | None = None) -> CagClientError:
    return CagClientError("x", code=code, reason=reason or code.name, retry_after_s=retry_after_s)


POLICY = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=0.3, multiplier=2)


@pytest.mark.parametrize(
    ("attempt", "failure", "kwargs", "expected"),
    [
        (1, error(grpc.StatusCode.UNAVAILABLE), {}, 0.05),  # half of 0.1
        (2, error(grpc.StatusCode.RESOURCE_EXHAUSTED), {}, 0.1),  # half of 0.2
        (2, error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=1.0), {}, 1.0),  # the server's hint wins
        (3, error(grpc.StatusCode.UNAVAILABLE), {}, None),  # attempts spent
        (1, error(grpc.StatusCode.UNAVAILABLE), {"tokens_seen": True}, None),  # the reader saw part of an answer
        (1, error(grpc.StatusCode.UNAVAILABLE, retry_after_s=5), {"remaining_s": 2.0}, None),  # past the deadline
        (1, error(grpc.StatusCode.UNAVAILABLE, "FALLBACK_UNAVAILABLE"), {}, None),
        (1, error(grpc.StatusCode.INVALID_ARGUMENT), {}, None),
        (1, error(grpc.StatusCode.DEADLINE_EXCEEDED), {}, None),
        (1, error(grpc.StatusCode.UNAUTHENTICATED), {}, None),
    ],
)
def test_retry_decisions(attempt: int, failure: CagClientError, kwargs: dict[str, Any], expected: float | None) -> None:
    assert POLICY.delay_s(attempt, failure, jitter=lambda: 0.5, **kwargs) == expected


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=0.3)
    assert policy.delay_s(6, error(grpc.StatusCode.UNAVAILABLE), jitter=lambda: 0.999) == pytest.approx(0.2997)


def test_policy_is_validated() -> None:
    with pytest.raises(InvalidFieldError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_request_checks() -> None:
    request = generate_request("q?", route="billing", metadata={"intent": "refund"}, sampling=Sampling(seed=7))
    assert dict(request.metadata) == {"intent": "refund", "route": "billing"} and request.sampling.seed == 7
    for bad in (
        lambda: generate_request("  "),
        lambda: generate_request("q", route="a", metadata={"route": "b"}),
        lambda: generate_request("q", metadata={"n": 1}),  # type: ignore[dict-item]
        lambda: generate_request("q", sampling=Sampling(max_new_tokens=2**40)),
    ):
        with pytest.raises(InvalidArgumentError):
            bad()


def event(**kw: Any) -> common_pb2.GenerateResponse:
    return common_pb2.GenerateResponse(**kw)


def test_builder_folds_a_stream() -> None:
    builder = AnswerBuilder()
    decision = common_pb2.RouteDecision(
        route="billing", basis=common_pb2.ROUTE_BASIS_RULE, path=common_pb2.ANSWER_PATH_MODULE
    )
    assert builder.add(event(decision=decision)) == ""
    assert builder.add(event(token=common_pb2.TokenChunk(text="Re", token_ids=[1]))) == "Re"
    assert builder.add(event(token=common_pb2.TokenChunk(text="funds", token_ids=[2, 3]))) == "funds"
    served = common_pb2.ServedModule(module_id="m1", version=2, tier=common_pb2.TIER_HOST_RAM)
    builder.add(event(done=common_pb2.GenerateSummary(ttft_ms=4.5, modules=[served], trace_id="ab")))
    answer = builder.answer()
    assert (answer.text, answer.token_ids) == ("Refunds", (1, 2, 3))
    assert answer.decision is not None and (answer.decision.basis, answer.decision.path) == ("rule", "module")
    assert answer.summary.modules[0].tier == "host_ram" and answer.summary.ttft_ms == 4.5
    assert answer.to_dict()["summary"]["modules"] == ({"module_id": "m1", "version": 2, "tier": "host_ram"},)


@pytest.mark.parametrize(
    "events",
    [
        [event(token=common_pb2.TokenChunk(text="a")), event(decision=common_pb2.RouteDecision())],
        [event(done=common_pb2.GenerateSummary()), event(token=common_pb2.TokenChunk(text="a"))],
        [event()],
    ],
)
def test_builder_refuses_streams_out_of_order(events: list[common_pb2.GenerateResponse]) -> None:
    builder = AnswerBuilder()
    with pytest.raises(CagClientError, match="the router sent") as failure:
        for e in events:
            builder.add(e)
    assert failure.value.reason == "STREAM_OUT_OF_ORDER"


def test_builder_without_final_record() -> None:
    builder = AnswerBuilder()
    builder.add(event(token=common_pb2.TokenChunk(text="a")))
    with pytest.raises(CagClientError) as failure:
        builder.answer()
    assert failure.value.reason == "INCOMPLETE_STREAM"
