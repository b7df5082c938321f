"""Replicas from their announcements in the replica bucket (cag.events.replica_bucket): those announced when `cag
top` starts, then as they come and go (a deleted or expired key takes its replica off the list).

It reads as the `monitor` NATS identity, which may watch the bucket as routers do (cag.infra.nats_auth). When no
replica has announced yet there is no bucket, and no replica from here; when NATS cannot be read, `error` says why.
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cag.cli.invalidate_cmd import shown
from cag.cli.top.events import connect_timeout
from cag.cli.top.model import ReplicaTarget
from cag.events.replicas import BUCKET, parse_announcement


class AnnouncedSource:
    def __init__(self, nats_url: str, *, timeout_s: float) -> None:
        self.nats_url = nats_url
        self.timeout_s = timeout_s  # to connect and read the current keys, in all
        self.error = ""  # why the announcements cannot be read ("" while they can)
        self._replicas: dict[str, ReplicaTarget] = {}
        self._nc = NatsClient()
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Reads the replicas announced now, then follows the bucket in the background."""
        try:
            async with asyncio.timeout(self.timeout_s):
                timeout = connect_timeout(self.timeout_s)
                await self._nc.connect(self.nats_url, connect_timeout=timeout, max_reconnect_attempts=-1)
                bucket = await self._nc.jetstream().key_value(BUCKET)
                watcher = await bucket.watch(">")
                # The watcher hands None once it has delivered every current key.
                while (entry := await watcher.updates(timeout=self.timeout_s)) is not None:  # type: ignore[no-untyped-call]
                    self._apply(entry)
        except (BucketNotFoundError, NotFoundError):
            return  # no replica has announced itself yet
        except (NatsError, JetStreamError, OSError, TimeoutError) as e:
            self.error = f"replica announcements at {shown(self.nats_url)}: {e!r}"
            return
        self._following = asyncio.create_task(self._follow(watcher), name="replica-announcements")

    async def targets(self) -> list[ReplicaTarget]:
        return sorted(self._replicas.values(), key=lambda t: t.name)

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        if not self._nc.is_closed:
            await self._nc.close()

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):  # withdrawn at shutdown, or expired without a heartbeat
            self._replicas.pop(entry.key, None)
            return
        document = parse_announcement(entry.key, entry.value or b"")
        if document is not None:
            self._replicas[document.replica_id] = ReplicaTarget(name=document.replica_id, address=document.address)
