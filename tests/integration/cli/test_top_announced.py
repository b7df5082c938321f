"""`cag top`'s replicas from their announcements, on the real NATS server with the platform's permissions: as the
monitor identity it reads the replicas announced at start and follows them as they come and go; it may not write a
replica's key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from cag.cli.top.announced import AnnouncedSource
from cag.cli.top.model import ReplicaTarget
from cag.events.replica_bucket import AnnouncementWriter, connect, create_bucket
from cag.events.replicas import BUCKET, ReplicaAnnouncementV1
from tests.infra_fixtures import Infra

TTL_S = 6.0  # the cache pools' default (the bucket exists once per server, with one configuration)
WAIT_S = 10.0


def document(replica_id: str, address: str) -> ReplicaAnnouncementV1:
    return ReplicaAnnouncementV1(
        replica_id=replica_id, address=address, capacity=2, sequence=1, sent_at=datetime.now(UTC)
    )


@pytest.fixture
async def cachepool(infra: Infra) -> AsyncIterator[Client]:
    if not infra.nats_permissions_enforced:
        pytest.skip("the NATS server under test is not the one these tests configure")
    client = await connect(infra.nats_url_for("cachepool"))
    try:
        yield client
    finally:
        await client.close()


async def replica_bucket(cachepool: Client) -> KeyValue:
    """The bucket as whoever created it first on this server made it, else a new one."""
    try:
        return await cachepool.jetstream().key_value(BUCKET)
    except BucketNotFoundError:
        return await create_bucket(cachepool, TTL_S)


async def until(source: AnnouncedSource, present: ReplicaTarget, absent: str) -> list[ReplicaTarget]:
    """The source's targets once `present` is among them and no target is named `absent`."""
    async with asyncio.timeout(WAIT_S):
        while True:
            targets = await source.targets()
            if present in targets and absent not in {t.name for t in targets}:
                return targets
            await asyncio.sleep(0.05)


async def test_the_monitor_reads_the_announced_replicas_and_follows_them(cachepool: Client, infra: Infra) -> None:
    bucket = await replica_bucket(cachepool)
    first = AnnouncementWriter(bucket, "top-it-a")
    await first.put(document("top-it-a", "127.0.0.1:6001"))
    source = AnnouncedSource(infra.nats_url_for("monitor"), timeout_s=WAIT_S)
    await source.start()
    try:
        assert source.error == ""
        a = ReplicaTarget(name="top-it-a", address="127.0.0.1:6001")
        assert a in await source.targets()  # announced before the source started: there at once
        second = AnnouncementWriter(bucket, "top-it-b")
        await second.put(document("top-it-b", "127.0.0.1:6002"))
        await first.withdraw()
        targets = await until(source, ReplicaTarget(name="top-it-b", address="127.0.0.1:6002"), absent="top-it-a")
        assert [t.name for t in targets] == sorted(t.name for t in targets)
        await second.withdraw()
    finally:
        await source.close()


async def test_the_monitor_may_not_write_a_replicas_key(cachepool: Client, infra: Infra) -> None:
    await replica_bucket(cachepool)
    monitor = await connect(infra.nats_url_for("monitor"))
    try:
        with pytest.raises(nats.errors.TimeoutError):  # the server drops the put: no stream acknowledges it
            await monitor.jetstream().publish(f"$KV.{BUCKET}.top-it-c", b"{}", timeout=2)
    finally:
        await monitor.close()
    admin = await connect(infra.nats_url)
    try:
        with pytest.raises(KeyNotFoundError):
            await (await admin.jetstream().key_value(BUCKET)).get("top-it-c")
    finally:
        await admin.close()
