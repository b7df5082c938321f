"""An engine's token stream, run in a worker thread and read from the event loop.

The engine computes each token synchronously; its stream runs on a thread of the pool's executor so the loop
stays free for other requests, events and RPCs. Closing the reader (a cancelled client, a deadline) stops the
worker after the token in progress and closes the engine's stream on the worker's own thread (a generator is
closed where it runs).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Generator, Iterator
from concurrent.futures import Executor
from typing import Protocol

from cag.engine import GenerateRequest, TokenEvent


class Generates(Protocol):
    def generate(self, request: GenerateRequest) -> Iterator[TokenEvent]: ...


class _End:
    """Marks the end of the stream in the hand-over queue."""


_END = _End()


async def stream_tokens(
    engine: Generates, request: GenerateRequest, executor: Executor
) -> AsyncGenerator[TokenEvent, None]:
    """The engine's events for `request`, as they come; the engine's errors are raised here."""
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue[TokenEvent | BaseException | _End] = asyncio.Queue()
    stop = threading.Event()

    def hand(item: TokenEvent | BaseException | _End) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(handed.put_nowait, item)

    def run() -> None:
        try:
            events = engine.generate(request)
            try:
                for event in events:
                    hand(event)
                    if stop.is_set():
                        break
            finally:
                if isinstance(events, Generator):  # an engine's stream is a generator: closing it frees its rows
                    events.close()
        except BaseException as e:  # handed to the reader, which raises it on the loop
            hand(e)
        else:
            hand(_END)

    worker = loop.run_in_executor(executor, run)
    try:
        while True:
            item = await handed.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # The worker finishes on its own; its result (or error) was handed over already.
        worker.add_done_callback(lambda f: f.exception())
