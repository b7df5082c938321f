"""The event backbone against real NATS and Postgres: triggers in, module events out, exactly and in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from cag.events.bus import make_broker, publish_event
from cag.events.schemas import Envelope, ModelRevisedV1, RouteDecidedV1, SourceChangedV1
from cag.lifecycle import StopSignal, bounded
from cag.registry.core import RegistryCore
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.store import PostgresStore
from cag.registry.handlers import subscribe_invalidations, subscribe_route_decisions
from cag.registry.outbox import OutboxRelay
from cag.registry.triggers import ModelRevised, SourceChanged, affected_modules
from tests.conformance.test_store_conformance import load, states
from tests.infra_fixtures import FreshDatabase, Infra
from tests.registry_population import generate_population


@dataclass
class Registry:
    core: RegistryCore
    store: PostgresStore
    js: JetStreamContext


@pytest.fixture
async def registry(infra: Infra, fresh_database: FreshDatabase) -> AsyncIterator[Registry]:
    engine = connect(fresh_database.database_url)
    sessions = session_factory(engine)
    store = PostgresStore(sessions)
    core = RegistryCore(store, verifier=lambda record: None)  # files are not under test here
    broker = make_broker(infra.nats_url)
    subscribe_invalidations(broker, core)
    await broker.start()
    relay = OutboxRelay(sessions, partial(publish_event, broker), retry_interval_s=0.1)
    stop = StopSignal()
    relay_task = asyncio.create_task(relay.run(stop))
    client = await nats.connect(infra.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        yield Registry(core=core, store=store, js=client.jetstream())
    finally:  # every step bounded: a stuck peer fails the test instead of hanging the session
        stop.set()
        await asyncio.wait_for(relay_task, 10)
        await bounded(broker.stop(), "broker")
        await bounded(client.close(), "test client")
        await bounded(engine.dispose(), "database pool")


async def _watch(js: JetStreamContext, subject: str, durable: str) -> JetStreamContext.PullSubscription:
    """A durable consumer of events published from now on (the stream outlives each test)."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    return await js.pull_subscribe(subject, durable=durable, stream="cag", config=config)


async def _collect(sub: JetStreamContext.PullSubscription, want: int, timeout_s: float = 20.0) -> list[Envelope]:
    got: list[Envelope] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError):  # nats raises both its own and the builtin one
            for msg in await sub.fetch(50, timeout=0.5):
                got.append(Envelope.model_validate_json(msg.data))
                await msg.ack()
    return got


async def test_ops_event_invalidates_exactly_and_announces_each_module(registry: Registry) -> None:
    population = generate_population()
    await load(registry.store, population)
    watch = await _watch(registry.js, "cag.module.invalidated", "t-invalidated")
    trigger = ModelRevised(model_name="smollm2", model_revision="rev-b")
    expected = affected_modules([await registry.store.get(r.module_id) for r in population.records], trigger)
    event = Envelope.wrap(ModelRevisedV1(model_name="smollm2", model_revision="rev-b"))
    await registry.js.publish(event.subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id})
    announced = await _collect(watch, len(expected))
    assert {e.data["module_id"] for e in announced} == set(expected)
    assert all(e.data["trigger_event_id"] == event.event_id for e in announced)
    now = await states(registry.store)
    assert {m for m, s in now.items() if s.value == "invalidated"} == set(expected)


async def test_duplicated_and_redelivered_events_change_nothing(registry: Registry) -> None:
    population = generate_population()
    await load(registry.store, population)
    watch = await _watch(registry.js, "cag.module.invalidated", "t-dupes")
    trigger = SourceChanged(tenant_id="acme", source_uri="git://kb/acme/system", checksum="new")
    expected = affected_modules([await registry.store.get(r.module_id) for r in population.records], trigger)
    event = Envelope.wrap(SourceChangedV1(tenant_id="acme", source_uri="git://kb/acme/system", checksum="new"))
    body = event.model_dump_json().encode()
    # The same event three times: once, again with the same Nats-Msg-Id (dropped by JetStream), and again
    # under a new message id (a redelivery JetStream cannot recognise: the registry's event-id check must).
    for msg_id in (event.event_id, event.event_id, "redelivery-1"):
        await registry.js.publish(event.subject, body, headers={"Nats-Msg-Id": msg_id})
    announced = await _collect(watch, len(expected) + 1, timeout_s=5)
    assert sorted(e.data["module_id"] for e in announced) == sorted(expected)


async def test_unknown_schema_version_is_dead_lettered_and_the_consumer_goes_on(registry: Registry) -> None:
    await load(registry.store, generate_population())
    dlq = await _watch(registry.js, "cag.dlq.>", "t-dlq")
    watch = await _watch(registry.js, "cag.module.invalidated", "t-after-dlq")
    bad = {"event_id": "from-the-future", "subject": "cag.invalidate.model", "version": 99,
           "occurred_at": "2026-01-01T00:00:00Z", "data": {"model_name": "smollm2"}}  # fmt: skip
    await registry.js.publish("cag.invalidate.model", json.dumps(bad).encode(), headers={"Nats-Msg-Id": "bad-1"})
    await registry.js.publish("cag.invalidate.model", b"not json at all", headers={"Nats-Msg-Id": "bad-2"})
    good = Envelope.wrap(ModelRevisedV1(model_name="tinyllama", model_revision="rev-y"))
    await registry.js.publish(good.subject, good.model_dump_json().encode(), headers={"Nats-Msg-Id": good.event_id})
    parked = []
    with contextlib.suppress(TimeoutError):  # nats raises both its own and the builtin one
        for _ in range(20):
            parked += await dlq.fetch(10, timeout=0.5)
            if len(parked) >= 2:
                break
    assert sorted(m.data for m in parked) == sorted([json.dumps(bad).encode(), b"not json at all"])
    assert all(m.subject == "cag.dlq.cag.invalidate.model" for m in parked)
    assert await _collect(watch, 1), "the valid event behind the bad ones was still processed"


async def test_events_written_while_nats_is_down_arrive_after_restart_in_order(
    registry: Registry, infra: Infra
) -> None:
    population = generate_population()
    await load(registry.store, population)
    watch = await _watch(registry.js, "cag.module.invalidated", "t-outage")
    infra.stop_nats()
    try:
        triggers = [
            ModelRevised(model_name="smollm2", model_revision="rev-b"),
            ModelRevised(model_name="tinyllama", model_revision="rev-y"),
        ]
        changed = []
        for trigger in triggers:  # the registry keeps writing while NATS is away
            changed += (await registry.core.invalidate(trigger))[1]
        assert changed
    finally:
        infra.start_nats()
    announced = await _collect(watch, len(changed), timeout_s=30)
    assert [e.data["module_id"] for e in announced] == [r.module_id for r in changed]


async def test_route_decisions_land_in_the_audit_trail(registry: Registry, infra: Infra) -> None:
    broker = make_broker(infra.nats_url)
    subscribe_route_decisions(broker, registry.core)
    await broker.start()
    try:
        event = Envelope.wrap(RouteDecidedV1(request_id="r-1", tenant_id="audit-co", route="billing", path="module",
                                             module_ids=["system-1", "billing-1"], module_version=2, rule="intent"))  # fmt: skip
        for msg_id in (event.event_id, "again"):  # the second copy is a redelivery under another message id
            await registry.js.publish(event.subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id})
        deadline = asyncio.get_running_loop().time() + 10
        while not (recorded := await registry.store.route_decisions("audit-co")):
            assert asyncio.get_running_loop().time() < deadline, "the decision never reached the audit trail"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # time for the duplicate to be (not) recorded
        recorded = await registry.store.route_decisions("audit-co")
        assert [(d.event_id, d.module_ids, d.module_version) for d in recorded] == [
            (event.event_id, ("system-1", "billing-1"), 2)
        ]
    finally:
        await bounded(broker.stop(), "audit broker")
