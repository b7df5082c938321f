"""The JetStream key-value bucket of replica announcements (cag.events.replicas): one key per cache-pool replica.

Cache pools create the bucket (an identical configuration is a no-op) and put their key; routers watch it: a new
watcher gets every current key at once, then each change. Values expire `max_age_s` after their last put (a few
heartbeats), and the server then places a marker that tells watchers the key is gone, so a replica that died
without deleting its key leaves every router's view on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cag.events.replicas import BUCKET, MAX_ANNOUNCEMENT_BYTES, ReplicaAnnouncementV1, parse_announcement

log = logging.getLogger(__name__)
RETRY_S = 1.0


@dataclass(frozen=True, kw_only=True)
class Announced:
    """A replica's current document."""

    document: ReplicaAnnouncementV1


@dataclass(frozen=True, kw_only=True)
class Withdrawn:
    """A replica's key left the bucket (deleted at its shutdown, or expired)."""

    replica_id: str


ReplicaChange = Announced | Withdrawn


async def connect(nats_url: str) -> Client:
    """A connection that keeps reconnecting while NATS is away."""
    return await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=1)


def bucket_config(max_age_s: float) -> KeyValueConfig:
    # history 1: only the current document matters; the limit marker tells watchers a key expired.
    return KeyValueConfig(
        bucket=BUCKET,
        history=1,
        ttl=max_age_s,
        max_value_size=MAX_ANNOUNCEMENT_BYTES,
        limit_marker_ttl=max_age_s,
        description="cache-pool replicas: what each holds and its load",
    )


async def create_bucket(nc: Client, max_age_s: float) -> KeyValue:
    """The bucket, created with `max_age_s` when no replica has created it yet. An existing bucket is used as it
    is: its first creator's configuration holds (creating it again with another expiry would be refused)."""
    js = nc.jetstream()
    try:
        return await js.key_value(BUCKET)
    except (BucketNotFoundError, NotFoundError):
        pass
    try:
        return await js.create_key_value(bucket_config(max_age_s))
    except BadRequestError:  # another replica created it in between
        return await js.key_value(BUCKET)


class AnnouncementWriter:
    """One replica's key: `put` its document, `withdraw` it at shutdown."""

    def __init__(self, bucket: KeyValue, replica_id: str) -> None:
        self._bucket = bucket
        self.replica_id = replica_id

    async def put(self, document: ReplicaAnnouncementV1) -> None:
        if document.replica_id != self.replica_id:
            raise ValueError(f"replica {self.replica_id} may not announce {document.replica_id}")
        await self._bucket.put(self.replica_id, document.model_dump_json().encode())

    async def withdraw(self) -> None:
        await self._bucket.delete(self.replica_id)


async def watch_replicas(nc: Client) -> AsyncIterator[ReplicaChange]:
    """Every replica's current document, then every change, until cancelled; documents that fail validation are
    skipped (logged by parse_announcement). Waits for the bucket while no replica has created it yet."""
    bucket = await _open(nc)
    watcher = await bucket.watch(">")
    try:
        async for entry in watcher:
            if entry is None:  # the current values have all been delivered
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                yield Withdrawn(replica_id=entry.key)
                continue
            document = parse_announcement(entry.key, entry.value or b"")
            if document is not None:
                yield Announced(document=document)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


async def follow_replicas(nc: Client, on_change: Callable[[ReplicaChange], Awaitable[None] | None]) -> None:
    """`watch_replicas` into `on_change` until cancelled, watching again after a lost connection or watcher."""
    while True:
        try:
            async for change in watch_replicas(nc):
                result = on_change(change)
                if result is not None:
                    await result
        except asyncio.CancelledError:
            raise
        except Exception as e:  # NATS away, the watcher torn down: the view keeps its last state meanwhile
            log.warning("replica announcements: watching again in %.0fs (%s)", RETRY_S, e)
        await asyncio.sleep(RETRY_S)


async def _open(nc: Client) -> KeyValue:
    while True:
        try:
            return await nc.jetstream().key_value(BUCKET)
        except (BucketNotFoundError, NotFoundError):
            log.info("replica announcements: no bucket %s yet (no cache pool announced); waiting", BUCKET)
            await asyncio.sleep(RETRY_S)
