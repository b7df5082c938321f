"""Engine slots for Generate requests: the asyncio side of cag.cachepool.core.admission.

A request holds a slot only while the engine works for it: the chain's modules are brought into a data tier
before (so a cold load never keeps a slot from requests whose modules are resident). A waiting request that
is cancelled (client gone, deadline passed) leaves the queue at once; a running one frees its slot at once.
Waiting requests take turns by tenant, weighted by their route's priority (the core's deficit round robin).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cag.cachepool.core.admission import AdmissionQueue, QueueLimits


class Scheduler:
    def __init__(self, limits: QueueLimits) -> None:
        self._queue = AdmissionQueue(limits)
        self._tickets = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[None]] = {}

    @property
    def running(self) -> int:
        return self._queue.running

    @property
    def queued(self) -> int:
        return self._queue.queued

    @asynccontextmanager
    async def slot(self, tenant_id: str, *, weight: int = 1) -> AsyncIterator[float]:
        """Holds an engine slot for the block; yields the seconds spent waiting for it. `weight` >= 1: the share
        of each round the tenant's requests get while this one heads them. OverloadedError (with a retry delay)
        when the queue, or the tenant's share of it, is full."""
        ticket = next(self._tickets)
        arrived = time.perf_counter()
        if not self._queue.arrive(ticket, tenant=tenant_id, weight=weight):
            turn = self._waiting[ticket] = asyncio.get_running_loop().create_future()
            try:
                await turn
            except BaseException:
                self._waiting.pop(ticket, None)
                self._wake(self._queue.leave(ticket))
                raise
        started = time.perf_counter()
        try:
            yield started - arrived
        finally:
            self._wake(self._queue.leave(ticket, ran_s=time.perf_counter() - started))

    def _wake(self, tickets: list[int]) -> None:
        for ticket in tickets:
            turn = self._waiting.pop(ticket)
            if not turn.done():
                turn.set_result(None)
