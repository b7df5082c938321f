"""Event fuzzing through real NATS and Postgres (issue 6): hostile messages for every registry consumer.

Each example publishes a batch of hostile messages (tests/support/event_fuzz) to both consumers, plus
replays of events already applied (same event id, another payload, another Nats-Msg-Id), then one
sentinel per consumer. Once the sentinels are dead-lettered every earlier message has been settled,
and then: every hostile message, and only those, is in the dead-letter queue, delivered once; the
replays are ignored; no table changed; no consumer has anything pending (nothing loops).

Bounded by default (a few batches); `CAG_FUZZ_EXAMPLES=n` runs n batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from cag.auth.caller import SYSTEM
from cag.events.bus import make_broker
from cag.events.consumer import EventConsumer, Redelivery, start_broker, subscribe
from cag.events.schemas import STREAM, Envelope, ModelRevisedV1, Payload, RouteDecidedV1
from cag.lifecycle import bounded
from cag.registry.core import RegistryCore
from cag.registry.core.triggers import ModelRevised
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.schema import Base
from cag.registry.db.store import PostgresStore
from cag.registry.handlers import invalidation_consumer, route_audit_consumer
from tests.conformance.test_store_conformance import load
from tests.infra_fixtures import FreshDatabase, Infra
from tests.registry_population import generate_population
from tests.support.event_fuzz import Case, arrives, fuzz_settings, hostile_cases, new_msg_id, replay_of
from tests.support.grpc_fuzz import table_snapshot

FAST = Redelivery(max_deliver=3, backoff_s=(0.1, 0.2), ack_wait_s=5.0)
BATCHES = 6


@dataclass
class Applied:
    """An event the registry already applied, for replays."""

    envelope: Envelope
    other: Payload  # a payload that would change something if it were applied


@dataclass
class Fuzzed:
    consumers: list[EventConsumer[Any]]
    js: JetStreamContext
    dlq: JetStreamContext.PullSubscription
    snapshot: Callable[[], Awaitable[Any]]
    applied: list[Applied]


@pytest.fixture
async def fuzzed(infra: Infra, fresh_database: FreshDatabase) -> AsyncIterator[Fuzzed]:
    engine = connect(fresh_database.database_url)
    store = PostgresStore(session_factory(engine))
    core = RegistryCore(store)
    await load(store, generate_population())
    consumers = [invalidation_consumer(core, FAST), route_audit_consumer(core, FAST)]
    broker = make_broker(infra.nats_url)
    for consumer in consumers:
        subscribe(broker, consumer)
    await start_broker(broker)
    client = await nats.connect(infra.nats_url)
    js = client.jetstream()
    dlq = await js.pull_subscribe("cag.dlq.>", durable=f"t-fuzz-dlq-{uuid.uuid4().hex[:8]}", stream=STREAM,
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))  # fmt: skip
    # Apply one event per consumer first, so that every batch can replay them.
    revised = Envelope.wrap(ModelRevisedV1(model_name="smollm2", model_revision="rev-b"))
    await core.invalidate(SYSTEM, ModelRevised(model_name="smollm2", model_revision="rev-b"), event_id=revised.event_id)
    decided = Envelope.wrap(RouteDecidedV1(request_id="r-1", tenant_id="acme", route="billing", path="fallback"))
    await js.publish(decided.subject, decided.model_dump_json().encode(), headers={"Nats-Msg-Id": new_msg_id()})
    applied = [
        Applied(revised, ModelRevisedV1(model_name="tinyllama", model_revision="rev-z")),
        Applied(decided, RouteDecidedV1(request_id="r-2", tenant_id="other", route="shipping", path="module")),
    ]
    try:
        fuzz = Fuzzed(consumers, js, dlq, table_snapshot(engine, Base.metadata), applied)
        await _settle_all(fuzz)  # the route decision above is recorded before the first snapshot
        yield fuzz
    finally:
        await bounded(broker.stop(), "broker")
        await bounded(client.close(), "test client")
        await bounded(engine.dispose(), "database pool")


async def _settle_all(fuzz: Fuzzed) -> dict[str, list[bytes]]:
    """Publish a sentinel to each consumer and wait for all of them in the dead-letter queue; the bodies
    dead-lettered before, by consumer. Then wait until no consumer has anything pending."""
    sentinels = {}
    for consumer in fuzz.consumers:
        body = f"sentinel {uuid.uuid4()}".encode()
        sentinels[body] = consumer.name
        await fuzz.js.publish(consumer.accepts[0].subject, body, headers={"Nats-Msg-Id": new_msg_id()})
    parked: dict[str, list[bytes]] = {c.name: [] for c in fuzz.consumers}
    deadline = asyncio.get_running_loop().time() + 30
    while sentinels:
        assert asyncio.get_running_loop().time() < deadline, f"stuck consumers: {sorted(sentinels.values())}"
        with contextlib.suppress(TimeoutError):  # nats raises both its own and the builtin one
            for msg in await fuzz.dlq.fetch(20, timeout=0.5):
                await msg.ack()
                assert msg.headers is not None
                assert msg.headers["cag-deliveries"] == "1", "a hostile message was retried"
                if sentinels.pop(msg.data, None) is None:
                    parked[msg.headers["cag-consumer"]].append(msg.data)
    for consumer in fuzz.consumers:
        await _idle(fuzz.js, consumer.name)
    return parked


async def _idle(js: JetStreamContext, consumer: str, timeout_s: float = 10.0) -> None:
    """Wait until no message waits for a (re)delivery or an ack: nothing can be delivered again."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        info = await js.consumer_info(STREAM, consumer)
        if (info.num_pending, info.num_ack_pending) == (0, 0):
            return
        assert asyncio.get_running_loop().time() < deadline, f"consumer {consumer} never settled: {info}"
        await asyncio.sleep(0.05)


def _batch(consumer: EventConsumer[Any]) -> st.SearchStrategy[list[Case]]:
    arriving = hostile_cases(consumer).filter(lambda case: arrives(consumer, case.subject))
    return st.lists(arriving, min_size=1, max_size=5)


_TEMPLATES = [invalidation_consumer(None, FAST), route_audit_consumer(None, FAST)]  # type: ignore[arg-type]


@fuzz_settings(BATCHES)
@given(batches=st.tuples(*(_batch(c) for c in _TEMPLATES)), replay=st.booleans())
async def test_hostile_and_replayed_events_are_dead_lettered_or_ignored_and_change_nothing(
    fuzzed: Fuzzed, batches: tuple[list[Case], ...], replay: bool
) -> None:
    before = await fuzzed.snapshot()
    for case in (case for cases in batches for case in cases):
        await fuzzed.js.publish(case.subject, case.body, headers={"Nats-Msg-Id": new_msg_id()})
    if replay:  # same event id, another payload and time, another Nats-Msg-Id: only the consumer can tell
        for applied in fuzzed.applied:
            body = replay_of(applied.envelope, applied.other)
            await fuzzed.js.publish(applied.envelope.subject, body, headers={"Nats-Msg-Id": new_msg_id()})
    parked = await _settle_all(fuzzed)
    for consumer, cases in zip(fuzzed.consumers, batches, strict=True):
        assert parked[consumer.name] == [case.body for case in cases]
    assert await fuzzed.snapshot() == before
