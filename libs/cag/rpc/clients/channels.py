"""What every client of a platform service shares: one channel to `address` (host:port), the bearer token it
presents on every call, a default timeout, TLS when given (cag.rpc.tls), and closing as a context manager.
Blocking clients (the command line, scripts) send the token as call metadata on a traced channel; asyncio clients
(services calling services) carry it in the channel's interceptors."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import grpc

from cag.auth.credentials import bearer_metadata
from cag.rpc.auth import authenticated_channel
from cag.rpc.tls import ClientTls
from cag.telemetry import traced_channel


class BlockingChannel:
    """`token` None sends no credentials (the service then answers UNAUTHENTICATED)."""

    def __init__(self, address: str, *, token: str | None, timeout_s: float, tls: ClientTls | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = bearer_metadata(token) if token else ()
        channel = (
            grpc.insecure_channel(address)
            if tls is None
            else grpc.secure_channel(address, tls.credentials(), options=tls.options())
        )
        self._channel = traced_channel(channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s


class AsyncChannel:
    def __init__(self, address: str, *, token: str, timeout_s: float, tls: ClientTls | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = authenticated_channel(address, token, tls)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(grace=None)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s
