"""The SDK (cag.client) over the real gRPC stack: CagClient and AsyncCagClient against a grpc.aio server built by
cag.rpc.server.build_server (authentication and error mapping included).

The server's RouterService is a small scripted fake, not the router: it streams a decision, tokens and the
final record, or fails with the rich statuses cag.rpc.errors builds from domain errors, so these tests check
the client's side of the contract (stream folding, typed errors, retries, deadlines, cancellation) without a
cache pool or a model.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from typing_extensions import override

from cag.auth.tokens import issue_user_token
from cag.client import (
    AsyncCagClient,
    CagClient,
    DeadlineExceededError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryPolicy,
    UnauthenticatedError,
)
from cag.errors import CagError, KVCacheFullError
from cag.errors import PermissionDeniedError as DeniedError
from cag.infra.ports import free_port
from cag.rpc.auth import current_caller
from cag.rpc.server import build_server
from cag.v1 import common_pb2, router_pb2, router_pb2_grpc

KEY = secrets.token_bytes(32)


def user_token() -> str:
    """Minted when a test calls (one minted at import could expire before a long run reaches these tests)."""
    return issue_user_token(KEY, "acme", 300, workspace="billing", user="alice")


FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


class ScriptedRouter(router_pb2_grpc.RouterServiceServicer):
    """Generate: fails with `failures` in turn (before any token, or after the first one when `fail_after_token`),
    then answers "Hello" for the caller; `hang` streams one token and waits for cancellation."""

    def __init__(self, failures: list[CagError] | None = None, *, fail_after_token: bool = False) -> None:
        self.failures = list(failures or [])
        self.fail_after_token = fail_after_token
        self.calls: list[router_pb2.GenerateRequest] = []
        self.hang = False
        self.cancelled = asyncio.Event()

    def decision(self, request: router_pb2.GenerateRequest) -> common_pb2.RouteDecision:
        caller = current_caller()
        return common_pb2.RouteDecision(
            decision_id="d1", tenant_id=caller.sole_tenant or "", route=request.metadata.get("route", "billing"),
            module_ids=["sys", "billing"], module_version=3, basis=common_pb2.ROUTE_BASIS_METADATA,
            rule_id="r7", confidence=1.0, path=common_pb2.ANSWER_PATH_MODULE, reason=f"{caller.user}@{caller.workspace}",
        )  # fmt: skip

    @override
    async def Generate(self, request: router_pb2.GenerateRequest, context: Any) -> AsyncIterator[Any]:
        self.calls.append(request)
        yield common_pb2.GenerateResponse(decision=self.decision(request))
        if self.failures and not self.fail_after_token:
            raise self.failures.pop(0)
        yield common_pb2.GenerateResponse(token=common_pb2.TokenChunk(text="Hel", token_ids=[1, 2]))
        if self.failures:
            raise self.failures.pop(0)
        if self.hang:
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        yield common_pb2.GenerateResponse(token=common_pb2.TokenChunk(text="lo", token_ids=[3], index=2))
        served = [
            common_pb2.ServedModule(module_id=m, version=3, tier=common_pb2.TIER_ENGINE) for m in ("sys", "billing")
        ]
        summary = common_pb2.GenerateSummary(
            ttft_ms=2.5, total_ms=9.0, tokens=3, path=common_pb2.ANSWER_PATH_MODULE, module_ids=["sys", "billing"],
            modules=served, finish_reason=common_pb2.FINISH_REASON_STOP, trace_id="0af7651916cd43dd8448eb211c80319c",
        )  # fmt: skip
        yield common_pb2.GenerateResponse(done=summary)

    @override
    async def Explain(self, request: router_pb2.GenerateRequest, context: Any) -> common_pb2.RouteDecision:
        self.calls.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return self.decision(request)


@asynccontextmanager
async def serve(router: ScriptedRouter) -> AsyncIterator[str]:
    address = f"127.0.0.1:{free_port()}"
    bindings = [(router_pb2_grpc.add_RouterServiceServicer_to_server, router)]
    server = await build_server(bindings, ["cag.v1.RouterService"], address, auth=KEY)
    await server.start()
    try:
        yield address
    finally:
        await server.stop(grace=None)


async def test_sync_ask_folds_the_stream() -> None:
    router = ScriptedRouter()
    async with serve(router) as address:
        with CagClient(address, user_token()) as cag:
            answer = await asyncio.to_thread(cag.ask, "How do refunds work?", route="refunds", metadata={"intent": "x"})
    assert (answer.text, answer.token_ids) == ("Hello", (1, 2, 3))
    assert answer.decision is not None
    assert (answer.decision.route, answer.decision.basis, answer.decision.tenant) == ("refunds", "metadata", "acme")
    assert answer.decision.reason == "alice@billing"  # the end user's identity reached the handler
    assert [(m.module_id, m.version, m.tier) for m in answer.summary.modules] == [
        ("sys", 3, "engine"),
        ("billing", 3, "engine"),
    ]
    assert (answer.summary.path, answer.summary.ttft_ms, answer.summary.finish_reason) == ("module", 2.5, "stop")
    assert dict(router.calls[0].metadata) == {"intent": "x", "route": "refunds"}


async def test_async_stream_yields_chunks_then_the_record() -> None:
    async with serve(ScriptedRouter()) as address, AsyncCagClient(address, user_token()) as cag:
        async with cag.stream("q") as stream:
            chunks = [chunk async for chunk in stream]
        assert chunks == ["Hel", "lo"] and stream.answer.summary.trace_id.startswith("0af7")
        decision = await cag.explain("q", route="billing")
        assert decision.rule_id == "r7" and decision.module_ids == ("sys", "billing")


async def test_transient_failures_before_the_first_token_are_retried() -> None:
    router = ScriptedRouter([KVCacheFullError("queue full"), KVCacheFullError("queue full")])
    async with serve(router) as address, AsyncCagClient(address, user_token(), retry=FAST_RETRY) as cag:
        assert (await cag.ask("q")).text == "Hello"
    assert len(router.calls) == 3


async def test_retries_are_bounded() -> None:
    router = ScriptedRouter([KVCacheFullError("queue full")] * 3)
    async with serve(router) as address:
        with (
            CagClient(address, user_token(), retry=FAST_RETRY) as cag,
            pytest.raises(ResourceExhaustedError) as failure,
        ):
            await asyncio.to_thread(cag.ask, "q")
    assert failure.value.reason == "KV_CACHE_FULL" and len(router.calls) == 3


async def test_no_retry_once_a_token_arrived() -> None:
    router = ScriptedRouter([KVCacheFullError("engine full mid-answer")], fail_after_token=True)
    async with serve(router) as address, AsyncCagClient(address, user_token(), retry=FAST_RETRY) as cag:
        seen: list[str] = []
        with pytest.raises(ResourceExhaustedError):
            async with cag.stream("q") as stream:
                async for chunk in stream:
                    seen.append(chunk)
    assert seen == ["Hel"] and len(router.calls) == 1


async def test_permission_denied_and_bad_tokens_are_typed() -> None:
    router = ScriptedRouter([DeniedError("user:alice may not read tenant 'globex'")])
    async with serve(router) as address:
        async with AsyncCagClient(address, user_token(), retry=FAST_RETRY) as cag:
            with pytest.raises(PermissionDeniedError) as denied:
                await cag.explain("q", tenant="globex")
        assert denied.value.reason == "PERMISSION_DENIED" and "globex" in denied.value.message
        forged = issue_user_token(secrets.token_bytes(32), "acme", 60, user="mallory")
        async with AsyncCagClient(address, forged) as cag:
            with pytest.raises(UnauthenticatedError, match="signature does not verify"):
                await cag.ask("q")


async def test_deadline() -> None:
    router = ScriptedRouter()
    router.hang = True
    async with serve(router) as address, AsyncCagClient(address, user_token()) as cag:
        with pytest.raises(DeadlineExceededError):
            await cag.ask("q", timeout_s=0.5)
        await asyncio.wait_for(router.cancelled.wait(), 5)


async def test_closing_a_sync_stream_cancels_the_call() -> None:
    router = ScriptedRouter()
    router.hang = True
    async with serve(router) as address:
        with CagClient(address, user_token()) as cag:

            def first_chunk_then_stop() -> str:
                with cag.stream("q") as stream:
                    return next(stream)  # leaving the block closes the stream

            assert await asyncio.to_thread(first_chunk_then_stop) == "Hel"
            await asyncio.wait_for(router.cancelled.wait(), 5)


async def test_breaking_out_of_an_async_stream_cancels_the_call() -> None:
    router = ScriptedRouter()
    router.hang = True
    async with serve(router) as address, AsyncCagClient(address, user_token()) as cag:
        async with cag.stream("q") as stream:
            async for _chunk in stream:
                break
        await asyncio.wait_for(router.cancelled.wait(), 5)
