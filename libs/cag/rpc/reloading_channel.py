"""A grpc.aio channel that follows its TLS files: when the client certificate, key or CA it was built from change
(a renewal rewriting the mounted Secret), the next call goes out on a channel built from the new files, so a
long-running service presents the renewed certificate without a restart.

Stubs take their method callables from the channel once, when they are built; the callables handed out here look
up the current channel at each call. Calls under way finish on the channel they started on; channels left behind
are closed with this one. The files are looked at no more than once a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc

from cag.rpc.tls import ClientTls, FollowedFiles

CHECK_INTERVAL_S = 1.0


class ReloadingChannel(grpc.aio.Channel):
    def __init__(self, build: Callable[[ClientTls], grpc.aio.Channel], tls: ClientTls) -> None:
        if tls.files is None:
            raise ValueError("a reloading channel follows the files its TLS was read from: give ClientTls.from_files")
        self._build = build
        self._tls = FollowedFiles(tls.files.paths(), tls.reread, tls)
        self._channel = build(tls)
        self._retired: list[grpc.aio.Channel] = []
        self._checked_at = time.monotonic()
        self.generation = 0  # how many times the files were read again

    def current(self) -> grpc.aio.Channel:
        """The channel built from the files as they are now (read again when they changed)."""
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL_S:
            self._checked_at = now
            renewed = self._tls.changed()
            if renewed is not None:
                self._retired.append(self._channel)
                self._channel = self._build(renewed)
                self.generation += 1
        return self._channel

    async def close(self, grace: float | None = None) -> None:
        for channel in (*self._retired, self._channel):
            await channel.close(grace)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "stream_stream", method, args, kwargs)


class _Rebinding:
    """A method callable of whichever channel is current when it is called (made once per channel)."""

    def __init__(self, owner: ReloadingChannel, kind: str, method: str, args: tuple[Any, ...], kwargs: Any) -> None:
        self._owner, self._kind, self._method, self._args, self._kwargs = owner, kind, method, args, kwargs
        self._bound: tuple[grpc.aio.Channel, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        if self._bound is None or self._bound[0] is not channel:
            self._bound = (channel, getattr(channel, self._kind)(self._method, *self._args, **self._kwargs))
        return self._bound[1](*args, **kwargs)
