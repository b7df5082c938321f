"""The router's clients: blocking (scripts, the command line) and asyncio (services), each presenting a bearer
token. They hand back gRPC's own call objects, so that whoever reads a stream can also cancel it; the product
SDK (cag.client) builds answers, typed errors and retries on top of them."""

from __future__ import annotations

import grpc

from cag.rpc.clients.channels import AsyncChannel, BlockingChannel
from cag.rpc.tls import ClientTls
from cag.v1 import common_pb2, router_pb2, router_pb2_grpc

# A generation streams for as long as the answer is: longer than a registry call may take.
DEFAULT_TIMEOUT_S = 120.0


class RouterClient(BlockingChannel):
    """Blocking calls on one channel to `address` (host:port), as `token`; use as a context manager."""

    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None = None
    ) -> grpc.CallIterator[common_pb2.GenerateResponse]:
        """The Generate stream: iterate it for GenerateResponse events (decision, tokens, done); `.cancel()`
        ends the call. Raises grpc.RpcError while iterating when the call fails."""
        return self._stub.Generate(request, timeout=self._timeout(timeout_s), metadata=self._metadata)

    def explain(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None = None
    ) -> common_pb2.RouteDecision:
        return self._stub.Explain(request, timeout=self._timeout(timeout_s), metadata=self._metadata)


class AsyncRouterClient(AsyncChannel):
    """The router over grpc.aio: the same calls as RouterClient; Generate's call is async-iterable."""

    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None = None
    ) -> grpc.aio.UnaryStreamCall[router_pb2.GenerateRequest, common_pb2.GenerateResponse]:
        """The Generate stream: `async for` its GenerateResponse events; `.cancel()` ends the call."""
        return self._stub.Generate(request, timeout=self._timeout(timeout_s))

    async def explain(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None = None
    ) -> common_pb2.RouteDecision:
        return await self._stub.Explain(request, timeout=self._timeout(timeout_s))
