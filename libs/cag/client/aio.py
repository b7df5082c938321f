"""AsyncCagClient: the asyncio SDK (async product services), the same calls as CagClient, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from types import TracebackType

import grpc

from cag.client.answer import Answer, AnswerBuilder, Decision, decision_of
from cag.client.errors import CagClientError, from_rpc_error
from cag.client.request import Sampling, generate_request
from cag.client.retry import RetryPolicy
from cag.rpc.clients.router import DEFAULT_TIMEOUT_S, AsyncRouterClient
from cag.rpc.tls import ClientTls
from cag.v1 import common_pb2, router_pb2

GenerateCall = grpc.aio.UnaryStreamCall[router_pb2.GenerateRequest, common_pb2.GenerateResponse]


class AsyncAnswerStream:
    """The text of an answer chunk by chunk (`async for`), then `answer`: the whole record.

    Closing it (`await aclose()`, or leaving its `async with` block) cancels the call; prefer `async with`
    when you may stop early, since an abandoned async iterator is only closed when it is collected.
    """

    def __init__(self, start: Callable[[float], GenerateCall], retry: RetryPolicy, timeout_s: float) -> None:
        self._builder = AnswerBuilder()
        self._answer: Answer | None = None
        self._chunks = self._read(start, retry, timeout_s)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        return await anext(self._chunks)

    async def __aenter__(self) -> AsyncAnswerStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    @property
    def decision(self) -> Decision | None:
        """The router's decision, once it arrived (before the first chunk)."""
        return self._builder.decision

    @property
    def answer(self) -> Answer:
        """The whole answer; only once the stream has been read to its end."""
        if self._answer is None:
            raise RuntimeError("the answer is not complete: read the stream to its end first")
        return self._answer

    async def _read(
        self, start: Callable[[float], GenerateCall], retry: RetryPolicy, timeout_s: float
    ) -> AsyncGenerator[str, None]:
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            self._builder = AnswerBuilder()
            call = start(max(deadline - time.monotonic(), 0.0))
            try:
                async for event in call:
                    text = self._builder.add(event)
                    if text:
                        yield text
                self._answer = self._builder.answer()
                return
            except grpc.aio.AioRpcError as e:
                error = from_rpc_error(e)
                remaining = deadline - time.monotonic()
                delay = retry.delay_s(attempt, error, tokens_seen=self._builder.tokens_seen, remaining_s=remaining)
                if delay is None:
                    raise error from e
            finally:
                call.cancel()  # a no-op once the call ended; ends it when the reader stopped early
            await asyncio.sleep(delay)


class AsyncCagClient:
    """Asks the platform through its router at `address` (host:port) as `token`, on grpc.aio.

    timeout_s: the default deadline of each call, retries included; retry: when to try again (RetryPolicy);
    tls: TLS towards the router (ClientTls.from_files(ca_file, ...)), None: plaintext.
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._router = AsyncRouterClient(address, token=token, timeout_s=timeout_s, tls=tls)

    async def __aenter__(self) -> AsyncCagClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._router.close()

    async def ask(
        self,
        query: str,
        *,
        tenant: str | None = None,
        route: str | None = None,
        metadata: Mapping[str, str] | None = None,
        sampling: Sampling | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        """The whole answer to `query` (see `stream` for the arguments). Raises CagClientError subclasses."""
        async with self.stream(query, tenant=tenant, route=route, metadata=metadata, sampling=sampling,
                               timeout_s=timeout_s) as chunks:  # fmt: skip
            async for _ in chunks:
                pass
            return chunks.answer

    def stream(
        self,
        query: str,
        *,
        tenant: str | None = None,
        route: str | None = None,
        metadata: Mapping[str, str] | None = None,
        sampling: Sampling | None = None,
        timeout_s: float | None = None,
    ) -> AsyncAnswerStream:
        """The answer to `query` as it is decoded (CagClient.stream's arguments). Errors surface while iterating."""
        request = generate_request(query, tenant=tenant, route=route, metadata=metadata, sampling=sampling)
        return AsyncAnswerStream(
            lambda remaining_s: self._router.generate(request, timeout_s=remaining_s),
            self.retry,
            self.timeout_s if timeout_s is None else timeout_s,
        )

    async def explain(
        self,
        query: str,
        *,
        tenant: str | None = None,
        route: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Decision:
        """The decision the router would make for `query`, without generating anything."""
        request = generate_request(query, tenant=tenant, route=route, metadata=metadata)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                remaining = max(deadline - time.monotonic(), 0.0)
                return decision_of(await self._router.explain(request, timeout_s=remaining))
            except grpc.aio.AioRpcError as e:
                error: CagClientError = from_rpc_error(e)
                delay = self.retry.delay_s(attempt, error, remaining_s=deadline - time.monotonic())
                if delay is None:
                    raise error from e
            await asyncio.sleep(delay)
