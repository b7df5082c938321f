"""Following the registry's change feed: Watch from the last applied sequence, reconnecting with backoff.

A service that serves from a snapshot of the registry (the router's routes, the cache pool's published
modules) hands each change to its own handler. The feed is gap-free and ordered, so resuming from the last
sequence applied neither misses nor repeats a change; while the registry is down the service keeps its
snapshot and keeps serving, and the follower retries until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable

import grpc

from cag.rpc.clients.registry import AsyncRegistryClient
from cag.v1 import registry_pb2

log = logging.getLogger(__name__)

ChangeHandler = Callable[[registry_pb2.ModuleChange], Awaitable[None]]
CaughtUpHandler = Callable[[], Awaitable[None]]


class RegistryFollower:
    """Applies every registry change after `since_sequence` to `on_change`, in order, until cancelled.

    `on_caught_up` runs each time the follower (re)connects and has applied the backlog it was sent first:
    a snapshot is complete from then on (the router starts answering, the cache pool starts serving).
    `last_sequence` is the sequence of the last change applied.
    """

    def __init__(
        self,
        client: AsyncRegistryClient,
        on_change: ChangeHandler,
        *,
        on_caught_up: CaughtUpHandler | None = None,
        tenant_id: str = "",
        since_sequence: int = 0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        caught_up_after_s: float = 0.05,
    ) -> None:
        self._client = client
        self._on_change = on_change
        self._on_caught_up = on_caught_up
        self._tenant_id = tenant_id
        self.last_sequence = since_sequence
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._caught_up_after_s = caught_up_after_s
        self.connected = False

    async def run(self) -> None:
        """Follow forever: a broken stream (registry down, restarted) is resumed after a jittered backoff."""
        delay = self._retry_initial_s
        while True:
            try:
                await self._follow()
            except grpc.aio.AioRpcError as e:
                log.warning("registry watch broke (%s: %s); retrying in %.1f s", e.code().name, e.details(), delay)
            self.connected = False
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._retry_max_s)

    async def _follow(self) -> None:
        stream = self._client.watch(since_sequence=self.last_sequence, tenant_id=self._tenant_id)
        caught_up = False
        # The feed has no "end of backlog" marker: a pause in the stream means the backlog was sent. The read
        # in flight is waited on, never cancelled (cancelling it would end the stream).
        reading: asyncio.Future[registry_pb2.ModuleChange] = asyncio.ensure_future(anext(stream))
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=None if caught_up else self._caught_up_after_s)
                if not done:
                    caught_up = await self._caught_up()
                    continue
                try:
                    change = reading.result()
                except StopAsyncIteration:
                    return
                self.connected = True
                await self._on_change(change)
                self.last_sequence = change.sequence
                reading = asyncio.ensure_future(anext(stream))
        finally:
            reading.cancel()  # a read in flight: cancelling it ends the generator, which cancels the call
            if isinstance(stream, AsyncGenerator):
                with contextlib.suppress(RuntimeError):  # "already running": the cancelled read is closing it
                    await stream.aclose()

    async def _caught_up(self) -> bool:
        self.connected = True
        if self._on_caught_up is not None:
            await self._on_caught_up()
        return True
