"""The fallback service's asyncio client (the router), presenting a bearer token. Generate hands back gRPC's own
call object, so that whoever reads the stream can also cancel it."""

from __future__ import annotations

import grpc

from cag.rpc.clients.channels import AsyncChannel
from cag.rpc.tls import ClientTls
from cag.v1 import common_pb2, fallback_pb2, fallback_pb2_grpc

# A generation streams for as long as the answer is.
DEFAULT_TIMEOUT_S = 120.0


class AsyncFallbackClient(AsyncChannel):
    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = fallback_pb2_grpc.FallbackServiceStub(self._channel)

    def generate(
        self, request: fallback_pb2.FallbackGenerateRequest, *, timeout_s: float | None = None
    ) -> grpc.aio.UnaryStreamCall[fallback_pb2.FallbackGenerateRequest, common_pb2.GenerateResponse]:
        """The Generate stream: `async for` its GenerateResponse events; `.cancel()` ends the call."""
        return self._stub.Generate(request, timeout=self._timeout(timeout_s))

    async def index(self, request: fallback_pb2.IndexRequest) -> fallback_pb2.IndexResponse:
        return await self._stub.Index(request, timeout=self.timeout_s)
