"""Stopping background loops without relying on task cancellation.

Before Python 3.12, `asyncio.wait_for` drops a cancellation that arrives as its inner call
completes, and client libraries use it everywhere: a loop told to stop by `Task.cancel()` alone
can miss it and run forever. Loops take a `StopSignal` instead and check it between iterations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

log = logging.getLogger(__name__)


class StopSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the signal is set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


async def bounded(step: Awaitable[None], what: str, timeout_s: float = 10.0) -> None:
    """Await a shutdown step for at most `timeout_s`: a stuck peer must not hang the process."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.warning("stopping the %s took longer than %.0f s; moving on", what, timeout_s)
