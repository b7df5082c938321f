"""The event stream as `cag top` follows it: module and compile events from a moment on, into a ring.

It reads as the `monitor` NATS identity, which may create ephemeral consumers of the stream but no durable one
(cag.infra.nats_auth): one push consumer, delivering to this process's inbox, without acks (a missed line on a
screen costs nothing). The server drops the consumer soon after nobody listens. A feed that cannot connect says
why (`error`) instead of failing: the replicas' table is shown all the same.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import Error as JetStreamError

from cag.cli.invalidate_cmd import shown
from cag.cli.top.model import EVENT_SUBJECTS, EventRing, recent_event
from cag.events.schemas import STREAM

# The server removes the consumer this long after its last delivery attempt found nobody listening.
CONSUMER_INACTIVE_S = 60.0


class EventFeed:
    def __init__(self, nats_url: str, ring: EventRing, *, since: datetime, timeout_s: float) -> None:
        self.nats_url = nats_url
        self.ring = ring
        self.since = since
        self.timeout_s = timeout_s  # to connect and create the consumer, in all
        self.error = ""  # why no events are coming ("" while they are)
        self._nc: NatsClient | None = None
        self._caught_up = asyncio.Event()

    async def start(self) -> None:
        """Connects and starts following; on failure, `error` says why."""
        self._nc = NatsClient()
        try:
            async with asyncio.timeout(self.timeout_s):
                pending = await self._follow(self._nc)
        except (NatsError, JetStreamError, OSError, TimeoutError) as e:
            self.error = self.error or f"{shown(self.nats_url)}: {e!r}"  # the connection's own reason first
            self._caught_up.set()
            await self.close()
            return
        if pending == 0:
            self._caught_up.set()

    async def _follow(self, nc: NatsClient) -> int:
        """Connects, subscribes this process's inbox and creates the consumer; returns the events it will deliver
        from the past."""
        await nc.connect(self.nats_url, connect_timeout=connect_timeout(self.timeout_s), max_reconnect_attempts=-1,
                         error_cb=self._on_error)  # fmt: skip
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=self._on_message)
        config = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=self.since,
            ack_policy=AckPolicy.NONE,
            filter_subjects=list(EVENT_SUBJECTS),
            inactive_threshold=CONSUMER_INACTIVE_S,
            mem_storage=True,
        )
        info = await nc.jetstream().add_consumer(STREAM, config, timeout=self.timeout_s)
        return int(info.num_pending or 0)

    async def caught_up(self, timeout_s: float) -> None:
        """Returns once the events the stream held at start have arrived (or the feed failed), or after
        `timeout_s`, saying so in `error`."""
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout_s)
        except TimeoutError:
            self.error = self.error or f"the stream's past events did not all arrive within {timeout_s:g} s"

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    async def _on_message(self, msg: Msg) -> None:
        self.error = ""  # delivering again (after a reconnection)
        event = recent_event(msg.data)
        if event is not None:
            self.ring.add([event])
        if msg.metadata.num_pending == 0:
            self._caught_up.set()

    async def _on_error(self, error: Exception) -> None:
        self.error = f"{shown(self.nats_url)}: {error!r}"


def connect_timeout(timeout_s: float) -> int:
    """One attempt to connect, within `timeout_s` (nats-py counts whole seconds)."""
    return max(1, int(timeout_s))
