"""The event backbone against real NATS and Postgres: triggers in, module events out, exactly and in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from cag.auth.caller import SYSTEM
from cag.events.bus import make_broker, publish_event
from cag.events.consumer import Redelivery, start_broker
from cag.events.schemas import MAX_BODY_BYTES, Envelope, ModelRevisedV1, RouteDecidedV1, SourceChangedV1
from cag.lifecycle import StopSignal, bounded
from cag.registry.core import RegistryCore
from cag.registry.core.triggers import ModelRevised, SourceChanged, TokenizerRetired, affected_modules
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.store import PostgresStore
from cag.registry.handlers import CONSUMER, subscribe_invalidations, subscribe_route_decisions
from cag.registry.outbox import OutboxRelay
from tests.conformance.test_store_conformance import load, states
from tests.infra_fixtures import FreshDatabase, Infra
from tests.registry_population import generate_population

# Short steps so that a retried event settles within a test; the policy itself is the production one.
FAST = Redelivery(max_deliver=3, backoff_s=(0.1, 0.2), ack_wait_s=5.0)


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
    core = RegistryCore(store)
    broker = make_broker(infra.nats_url)
    subscribe_invalidations(broker, core, FAST)
    await start_broker(broker)
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


async def _sentinel(js: JetStreamContext, dlq: JetStreamContext.PullSubscription, subject: str) -> list[bytes]:
    """Publish a malformed event behind everything published so far and wait for its dead letter.

    A consumer settles its messages one at a time in stream order, so once the sentinel is parked every
    earlier message has been applied, ignored or parked (a retried one would still be pending: see
    `_settled`). Returns the bodies dead-lettered before the sentinel.
    """
    body = f"sentinel {uuid.uuid4()}".encode()
    await js.publish(subject, body, headers={"Nats-Msg-Id": uuid.uuid4().hex})
    before: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError):  # nats raises both its own and the builtin one
            for msg in await dlq.fetch(10, timeout=0.5):
                await msg.ack()
                if msg.data == body:
                    return before
                before.append(msg.data)
    raise AssertionError(f"the sentinel on {subject} was never dead-lettered: the consumer is stuck")


async def _settled(js: JetStreamContext, consumer: str, timeout_s: float = 10.0) -> None:
    """Wait until no message waits for a (re)delivery or an ack: nothing can be delivered again."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        info = await js.consumer_info("cag", consumer)
        if (info.num_pending, info.num_ack_pending) == (0, 0):
            return
        assert asyncio.get_running_loop().time() < deadline, f"consumer {consumer} never settled: {info}"
        await asyncio.sleep(0.05)


async def _cag(*args: str) -> tuple[int, str]:
    """Run the `cag` command line; its exit status and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cag.cli.main", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


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
            changed += (await registry.core.invalidate(SYSTEM, trigger))[1]
        assert changed
    finally:
        infra.start_nats()
    announced = await _collect(watch, len(changed), timeout_s=30)
    assert [e.data["module_id"] for e in announced] == [r.module_id for r in changed]


async def test_route_decisions_land_in_the_audit_trail(registry: Registry, infra: Infra) -> None:
    broker = make_broker(infra.nats_url)
    subscribe_route_decisions(broker, registry.core, FAST)
    await start_broker(broker)
    dlq = await _watch(registry.js, "cag.dlq.>", "t-audit-dlq")
    try:
        event = Envelope.wrap(RouteDecidedV1(request_id="r-1", tenant_id="audit-co", route="billing", path="module",
                                             module_ids=["system-1", "billing-1"], module_version=2, rule="intent"))  # fmt: skip
        for msg_id in (event.event_id, "again"):  # the second copy is a redelivery under another message id
            await registry.js.publish(event.subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id})
        deadline = asyncio.get_running_loop().time() + 10
        while not (recorded := await registry.store.route_decisions("audit-co")):
            assert asyncio.get_running_loop().time() < deadline, "the decision never reached the audit trail"
            await asyncio.sleep(0.1)
        # The consumer handles one message at a time, in order: once a later one is through, the duplicate is.
        await _sentinel(registry.js, dlq, RouteDecidedV1.subject)
        recorded = await registry.store.route_decisions("audit-co")
        assert [(d.event_id, d.module_ids, d.module_version) for d in recorded] == [
            (event.event_id, ("system-1", "billing-1"), 2)
        ]
    finally:
        await bounded(broker.stop(), "audit broker")


async def test_event_id_of_100_characters_applies_once_and_does_not_loop(registry: Registry, infra: Infra) -> None:
    """The repro of the poison loop: `cag invalidate tokenizer --event-id eee…` (100 characters, over the
    old varchar(64)) failed the handler, which was NACKed and redelivered about 200 times a second forever."""
    population = generate_population()
    await load(registry.store, population)
    watch = await _watch(registry.js, "cag.module.invalidated", "t-long-id")
    dlq = await _watch(registry.js, "cag.dlq.>", "t-long-id-dlq")
    trigger = TokenizerRetired(tokenizer_revision="tok-2")
    expected = affected_modules([await registry.store.get(r.module_id) for r in population.records], trigger)
    event_id = "e" * 100
    args = ("invalidate", "tokenizer", "--revision", "tok-2", "--nats", infra.nats_url, "--event-id", event_id)
    assert (await _cag(*args))[0] == 0
    announced = await _collect(watch, len(expected))
    assert sorted(e.data["module_id"] for e in announced) == sorted(expected)
    assert {e.data["trigger_event_id"] for e in announced} == {event_id}
    applied = await states(registry.store)
    assert (await _cag(*args))[0] == 0  # a retry with the same id: deduplicated, changes nothing
    assert await _sentinel(registry.js, dlq, "cag.invalidate.tokenizer") == [], "nothing was dead-lettered"
    await _settled(registry.js, CONSUMER)  # applied and acked: not pending, not redelivered
    assert await states(registry.store) == applied


async def test_event_id_of_300_characters_is_refused_by_the_cli_and_dead_lettered_by_the_registry(
    registry: Registry, infra: Infra
) -> None:
    population = generate_population()
    await load(registry.store, population)
    before = await states(registry.store)
    dlq = await _watch(registry.js, "cag.dlq.>", "t-too-long-id")
    event_id = "e" * 300
    status, err = await _cag("invalidate", "tokenizer", "--revision", "tok-2", "--nats", infra.nats_url,
                             "--event-id", event_id)  # fmt: skip
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "--event-id" in err and event_id not in err
    # A producer that does not use the CLI gets its event dead-lettered on the first delivery.
    body = Envelope.wrap(ModelRevisedV1(model_name="smollm2", model_revision="rev-b")).model_dump_json()
    body = body.replace(json.loads(body)["event_id"], event_id)
    await registry.js.publish("cag.invalidate.model", body.encode(), headers={"Nats-Msg-Id": "too-long-1"})
    parked = await _sentinel(registry.js, dlq, "cag.invalidate.model")
    assert parked == [body.encode()]
    await _settled(registry.js, CONSUMER)
    assert await states(registry.store) == before


async def test_misrouted_and_oversized_events_are_dead_lettered_and_change_nothing(registry: Registry) -> None:
    population = generate_population()
    await load(registry.store, population)
    before = await states(registry.store)
    dlq = await _watch(registry.js, "cag.dlq.>", "t-misrouted")
    event = Envelope.wrap(ModelRevisedV1(model_name="smollm2", model_revision="rev-b"))
    body = event.model_dump_json()
    oversized = (body[:-1] + " " * MAX_BODY_BYTES + "}").encode()  # a valid event, padded past the limit
    # Subject-level permissions let a producer publish here; the envelope must not speak for another subject.
    await registry.js.publish("cag.invalidate.tokenizer", body.encode(), headers={"Nats-Msg-Id": "misrouted-1"})
    await registry.js.publish("cag.invalidate.model", oversized, headers={"Nats-Msg-Id": "oversized-1"})
    parked = await _sentinel(registry.js, dlq, "cag.invalidate.model")
    assert parked == [body.encode(), oversized]
    await _settled(registry.js, CONSUMER)
    assert await states(registry.store) == before
