"""`cag top` against the real serving path: after answers through the router and an invalidation (the registry's
outbox relayed to NATS), one frame shows the replica's hits, its TTFT and the invalidation, read through the Stats
RPC and the event stream as the monitor identity; a replica address that refuses connections shows down; without
--pool, the replicas come from their announcements."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from cag.cli.main import main
from cag.client import AsyncCagClient, Sampling
from cag.engine import Engine
from cag.events.bus import make_broker, publish_event
from cag.events.replicas import BUCKET
from cag.events.schemas import STREAM
from cag.infra.ports import free_port
from cag.lifecycle import StopSignal, bounded
from cag.registry.db.store import PostgresStore
from cag.registry.outbox import OutboxRelay
from cag.v1 import registry_pb2
from tests.e2e.conftest import Platform
from tests.infra_fixtures import Infra

QUESTION = "How do refunds work?"  # the rule "refunds" picks the billing route
EVENT_TIMEOUT_S = 20.0


@pytest.fixture
def serving_engine(tiny_engine: Engine) -> Engine:
    """The torch engine only: what `cag top` shows does not depend on the engine answering."""
    tiny_engine.evict()
    return tiny_engine


@pytest.fixture
async def relayed_outbox(platform: Platform, store: PostgresStore, infra: Infra) -> AsyncIterator[None]:
    """The registry's events reach NATS, as the registry service relays them (once the platform is up: the cache
    pool declares the stream)."""
    broker = make_broker(infra.nats_url)
    await broker.connect()
    stop = StopSignal()
    relay = asyncio.create_task(OutboxRelay(store.sessions, partial(publish_event, broker)).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(relay, 10)
        await bounded(broker.stop(), "broker")


async def invalidated_event(infra: Infra, module_id: str, published: asyncio.Event) -> None:
    """Returns once the registry's cag.module.invalidated event for `module_id` is in the stream."""
    nc = await nats.connect(infra.nats_url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        config = ConsumerConfig(deliver_subject=inbox, deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.NONE,
                                filter_subject="cag.module.invalidated")  # fmt: skip
        await nc.jetstream().add_consumer(STREAM, config)
        published.set()
        while module_id.encode() not in (await sub.next_msg(timeout=EVENT_TIMEOUT_S)).data:
            pass
    finally:
        await nc.close()


async def announced(infra: Infra, replica_id: str) -> None:
    """Returns once the replica's announcement is in the bucket (it announces once it has the registry's snapshot)."""
    nc = await nats.connect(infra.nats_url)
    try:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:
                with contextlib.suppress(BucketNotFoundError, KeyNotFoundError):
                    await (await nc.jetstream().key_value(BUCKET)).get(replica_id)
                    return
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def cag_top(*args: str) -> int:
    """`cag top` as a user runs it (its own event loop, on a thread of its own)."""
    return await asyncio.to_thread(main, ["top", *args])


@pytest.mark.usefixtures("relayed_outbox")
async def test_top_shows_the_replicas_hits_ttft_and_the_invalidation(
    platform: Platform,
    infra: Infra,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    async with AsyncCagClient(platform.router_address, platform.user_token()) as cag:
        for _ in range(2):  # the second answer finds the chain in the engine
            await cag.ask(QUESTION, sampling=Sampling(max_new_tokens=4))
    leaf = platform.module_ids()[-1]
    listening = asyncio.Event()
    seen = asyncio.create_task(invalidated_event(infra, leaf, listening))
    await listening.wait()
    trigger = registry_pb2.InvalidateRequest(module=registry_pb2.ModuleTrigger(module_id=leaf), reason="source edit")
    await platform.registry.admin().stub.Invalidate(trigger)
    await asyncio.wait_for(seen, EVENT_TIMEOUT_S)
    assert platform.pool.pool is not None
    for _ in range(400):  # the pool drops the module as the registry's feed reaches it
        if platform.pool.pool.invalidations:
            break
        await asyncio.sleep(0.05)

    monkeypatch.setenv("CAG_HOME", str(tmp_path))  # no platform started here
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(infra.auth_key_file))  # a local operator: an admin token
    pool_address, refused = platform.pool.settings.address, f"127.0.0.1:{free_port()}"
    options = ["--pool", pool_address, "--pool", refused, "--nats", infra.nats_url_for("monitor"), "--since", "5"]
    capsys.readouterr()
    assert await cag_top(*options, "--json") == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["events_error"] == ""
    pool, down = snapshot["replicas"]
    assert (pool["up"], pool["replica_id"], pool["invalidations"]) == (True, platform.pool.settings.replica, 1)
    # The first answer loaded the chain's two modules from their origin files, the second found both in a cache tier.
    assert (pool["hits"], pool["misses"]) == (2, 2)
    assert [t["tier"] for t in pool["tiers"]] == ["engine", "host_ram", "local_disk"]
    assert pool["ttft_samples"] == 2 and 0 < pool["ttft_p50_ms"] <= pool["ttft_p99_ms"]
    assert pool["ttft_window_s"] == 300.0
    assert (down["up"], down["target"]["address"]) == (False, refused)
    assert "UNAVAILABLE" in down["error"]
    invalidations = [e for e in snapshot["events"] if e["kind"] == "invalidated"]
    assert [e["module_id"] for e in invalidations] == [leaf]
    assert "source edit" in invalidations[0]["detail"]

    assert await cag_top(*options, "--once") == 0
    lines = capsys.readouterr().out.splitlines()
    [row] = [line for line in lines if pool_address in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[2:3] + cells[6:8] == ["up", "2", "2"]  # state, hits, misses
    assert cells[10].endswith(" ms") and cells[11].endswith(" ms")  # TTFT p50, p99
    refused_row = next(line for line in lines if refused in line)  # its reason wraps onto the lines below
    assert "down" in refused_row and "UNAVAILABLE" in refused_row
    assert any(leaf in line and "invalidated" in line for line in lines)


async def test_top_finds_the_replicas_that_announce_themselves(
    platform: Platform,
    infra: Infra,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("CAG_HOME", str(tmp_path))  # no platform started here: the replicas come from the bucket
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(infra.auth_key_file))
    replica = platform.pool.settings.replica
    await announced(infra, replica)
    capsys.readouterr()
    assert await cag_top("--json", "--nats", infra.nats_url_for("monitor")) == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["replicas_error"] == ""
    [mine] = [r for r in snapshot["replicas"] if r["target"]["name"] == replica]
    assert mine["up"] and mine["replica_id"] == replica
    assert mine["target"]["address"] == platform.pool.settings.address
