"""Domain errors over a real gRPC server: the status each maps to and the standard rich error model
(google.rpc.Status with a google.rpc.ErrorInfo in grpc-status-details-bin), read both by our helper and by
grpcio-status, the reader other gRPC clients mirror."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cag.errors import (
    CagError,
    InvalidFieldError,
    KVCacheFullError,
    KVTensorMismatchError,
    ModuleMismatchError,
    ModuleNotServableError,
    Status,
    UnknownEngineError,
)
from cag.infra.ports import free_port
from cag.rpc.errors import ERROR_DOMAIN, INTERNAL_MESSAGE, MAX_DETAIL_CHARS, MAX_MESSAGE_CHARS, error_details
from cag.rpc.server import build_server

Code = grpc.StatusCode
SERVICE = "cag.test.Errors"
RAISE = f"/{SERVICE}/Raise"

# What the handler raises, by the request's bytes.
_RAISED: dict[bytes, Exception] = {}


async def _raise(request: bytes, context: Any) -> bytes:
    raise _RAISED[request]


def _add_errors_service(_servicer: object, server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_raise)  # no (de)serializers: raw bytes both ways
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Raise": handler}),))


@pytest.fixture
async def address() -> AsyncIterator[str]:
    where = f"127.0.0.1:{free_port()}"
    server = await build_server([(_add_errors_service, object())], [SERVICE], where)
    await server.start()
    try:
        yield where
    finally:
        await server.stop(grace=None)


async def failure(address: str, error: Exception) -> grpc.aio.AioRpcError:
    key = str(id(error)).encode()
    _RAISED[key] = error
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(RAISE)(key, timeout=10)
    return caught.value


def error_class(status: Status) -> type[CagError]:
    """A CagError of `status` (no platform class maps to DEADLINE_EXCEEDED yet: every status must still map)."""
    return type(f"Test{status.name.title()}Error", (CagError,), {"status": status, "reason": f"TEST_{status.name}"})


@pytest.mark.parametrize("status", list(Status))
async def test_every_status_maps_to_its_grpc_code_with_the_error_info(address: str, status: Status) -> None:
    error = await failure(address, error_class(status)(f"a {status.name} error"))
    assert error.code() == Code[status.name]
    assert error.details() == f"a {status.name} error"
    details = error_details(error)
    assert details is not None
    assert (details.reason, details.field, details.domain) == (f"TEST_{status.name}", "", ERROR_DOMAIN)


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata"),
    [
        (
            ModuleMismatchError("tokenizer_revision", "tok-2", "tok-1", module="m-1"),
            Code.FAILED_PRECONDITION,
            "MODULE_MISMATCH",
            {"field": "tokenizer_revision", "expected": "tok-2", "actual": "tok-1", "module": "m-1"},
        ),
        (
            ModuleNotServableError("module m-1 is stale", module="m-1", state="stale"),
            Code.FAILED_PRECONDITION,
            "MODULE_NOT_SERVABLE",
            {"module": "m-1", "state": "stale"},
        ),
        (KVCacheFullError("KV cache full: 4096 + 1 tokens"), Code.RESOURCE_EXHAUSTED, "KV_CACHE_FULL", {}),
        (UnknownEngineError("unknown engine 'vllm'"), Code.NOT_FOUND, "UNKNOWN_ENGINE", {}),
        (
            KVTensorMismatchError("v.shape", "(2, 3, 1, 4)", "(2, 2, 1, 4)"),
            Code.FAILED_PRECONDITION,
            "KV_TENSOR_MISMATCH",
            {"field": "v.shape", "expected": "(2, 3, 1, 4)", "actual": "(2, 2, 1, 4)"},
        ),
    ],
)
async def test_domain_errors_carry_reason_and_facts(
    address: str, error: CagError, code: grpc.StatusCode, reason: str, metadata: dict[str, str]
) -> None:
    failed = await failure(address, error)
    assert (failed.code(), failed.details()) == (code, str(error))
    details = error_details(failed)
    assert details is not None
    assert (details.reason, details.field, dict(details.metadata)) == (reason, metadata.get("field", ""), metadata)


async def test_grpcio_status_reads_the_same_status(address: str) -> None:
    """What a client in another language does: decode google.rpc.Status, unpack its details by type."""
    failed = await failure(address, InvalidFieldError("page_size", "must be >= 0, got -1"))
    status = rpc_status.from_call(failed)  # raises unless code and message agree with the call's own
    assert status is not None and status.code == Code.INVALID_ARGUMENT.value[0]
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert [status.details[0].Unpack(info), status.details[1].Unpack(bad_request)] == [True, True]
    assert (info.reason, info.domain, dict(info.metadata)) == ("INVALID_FIELD", ERROR_DOMAIN, {"field": "page_size"})
    [violation] = bad_request.field_violations
    assert (violation.field, violation.description) == ("page_size", "page_size must be >= 0, got -1")


async def test_a_bug_is_internal_with_a_generic_message_and_reason(address: str) -> None:
    failed = await failure(address, RuntimeError("secret detail"))
    assert (failed.code(), failed.details()) == (Code.INTERNAL, INTERNAL_MESSAGE)
    details = error_details(failed)
    assert details is not None and (details.reason, dict(details.metadata)) == ("INTERNAL", {})
    assert "secret" not in str(rpc_status.from_call(failed))


async def test_messages_and_detail_values_are_bounded(address: str) -> None:
    """A value that echoes a hostile request cannot push the trailing metadata past gRPC's limits."""
    failed = await failure(address, ModuleMismatchError("model_revision", "r1", "x" * 1000))
    details = error_details(failed)
    assert details is not None and len(details.metadata["actual"]) == MAX_DETAIL_CHARS
    assert details.metadata["actual"].endswith("…") and "x" * 1000 in (failed.details() or "")

    failed = await failure(address, ModuleMismatchError("model_revision", "r1", "x" * 100_000))
    assert failed.code() == Code.FAILED_PRECONDITION and len(failed.details() or "") == MAX_MESSAGE_CHARS
    assert rpc_status.from_call(failed) is not None  # the Status carries the same, cut message


async def test_the_sync_client_reads_the_details_too(address: str) -> None:
    """The CLI's blocking channel: error_details takes a sync grpc.RpcError as it takes an aio one."""
    _RAISED[b"sync"] = KVCacheFullError("full")

    def call() -> grpc.RpcError:
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(RAISE)(b"sync", timeout=10)
        return caught.value

    details = error_details(await asyncio.to_thread(call))
    assert details is not None and details.reason == "KV_CACHE_FULL"


def test_a_call_without_details_has_none() -> None:
    """gRPC's own failures (a dead channel, a deadline) carry no ErrorInfo: None, not a guess."""
    with grpc.insecure_channel(f"127.0.0.1:{free_port()}") as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(RAISE)(b"", timeout=0.5)
    assert error_details(caught.value) is None
