"""The replica bucket on the real NATS server, with the platform's permissions: a cache pool creates it and puts
its key, a router watches it (the current documents at once, then changes, deletions and expiries), and no other
identity may write a replica's key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from cag.events.replica_bucket import (
    Announced,
    AnnouncementWriter,
    ReplicaChange,
    Withdrawn,
    connect,
    create_bucket,
    watch_replicas,
)
from cag.events.replicas import BUCKET, ReplicaAnnouncementV1
from tests.infra_fixtures import Infra

TTL_S = 2.0


def document(replica_id: str, sequence: int) -> ReplicaAnnouncementV1:
    return ReplicaAnnouncementV1(
        replica_id=replica_id, address="127.0.0.1:50052", capacity=2, sequence=sequence, sent_at=datetime.now(UTC)
    )


@pytest.fixture
async def clients(infra: Infra) -> AsyncIterator[dict[str, Client]]:
    if not infra.nats_permissions_enforced:
        pytest.skip("the NATS server under test is not the one these tests configure")
    made = {
        identity: await connect(infra.nats_url_for(identity)) for identity in ("cachepool", "router", "ops", "admin")
    }
    try:
        yield made
    finally:
        for client in made.values():
            await client.close()


async def next_change(changes: AsyncIterator[ReplicaChange]) -> ReplicaChange:
    return await asyncio.wait_for(anext(changes), 10)


async def test_a_router_sees_announcements_withdrawals_and_expiries(clients: dict[str, Client]) -> None:
    bucket = await create_bucket(clients["cachepool"], TTL_S)
    writer = AnnouncementWriter(bucket, "pool-it-a")
    await writer.put(document("pool-it-a", 1))
    changes = watch_replicas(clients["router"])
    try:
        seen = await next_change(changes)
        while not (isinstance(seen, Announced) and seen.document.replica_id == "pool-it-a"):
            seen = await next_change(changes)  # other tests' replicas may still be in the bucket
        assert seen.document.sequence == 1
        await writer.put(document("pool-it-a", 2))
        update = await next_change(changes)
        assert isinstance(update, Announced)
        assert update.document.sequence == 2
        await writer.withdraw()
        assert await next_change(changes) == Withdrawn(replica_id="pool-it-a")
        await writer.put(document("pool-it-a", 3))
        assert isinstance(await next_change(changes), Announced)
        assert await next_change(changes) == Withdrawn(replica_id="pool-it-a")  # expired: no heartbeat came
    finally:
        await changes.aclose()


@pytest.mark.parametrize("identity", ["router", "ops"])
async def test_no_other_identity_may_write_a_replicas_key(clients: dict[str, Client], identity: str) -> None:
    await create_bucket(clients["cachepool"], TTL_S)
    with pytest.raises(nats.errors.TimeoutError):  # the server drops the put: no stream ever acknowledges it
        await clients[identity].jetstream().publish(f"$KV.{BUCKET}.pool-it-b", b"{}", timeout=2)
    kv = await clients["admin"].jetstream().key_value(BUCKET)
    with pytest.raises(KeyNotFoundError):
        await kv.get("pool-it-b")


async def test_a_replica_with_another_expiry_uses_the_bucket_as_it_was_created(clients: dict[str, Client]) -> None:
    first = await create_bucket(clients["cachepool"], TTL_S)
    again = await create_bucket(clients["cachepool"], TTL_S * 3)  # refused as a creation; opened instead
    assert (await again.status()).ttl == (await first.status()).ttl
