"""The shared event consumer against real NATS: bounded redelivery with backoff, dead letters, progress."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from cag.events.bus import make_broker
from cag.events.consumer import EventConsumer, Redelivery, start_broker, subscribe
from cag.events.schemas import MAX_BODY_BYTES, STREAM, Envelope, LayoutChangedV1
from cag.lifecycle import bounded
from tests.infra_fixtures import Infra

FAST = Redelivery(max_deliver=3, backoff_s=(0.2, 0.4), ack_wait_s=5.0)
SUBJECT = LayoutChangedV1.subject


@dataclass
class Recorder:
    """A handler that fails for the poison event ids and remembers when each delivery came."""

    poison: set[str] = field(default_factory=set)
    deliveries: dict[str, list[float]] = field(default_factory=dict)
    seen: dict[str, asyncio.Event] = field(default_factory=dict)

    def arrived(self, event_id: str) -> asyncio.Event:
        return self.seen.setdefault(event_id, asyncio.Event())

    async def handle(self, envelope: Envelope, payload: LayoutChangedV1) -> None:
        self.deliveries.setdefault(envelope.event_id, []).append(asyncio.get_running_loop().time())
        self.arrived(envelope.event_id).set()
        if envelope.event_id in self.poison:
            raise RuntimeError("the database is away")


@dataclass
class Harness:
    recorder: Recorder
    consumer: EventConsumer[LayoutChangedV1]
    js: JetStreamContext
    dlq: JetStreamContext.PullSubscription


@pytest.fixture
async def harness(infra: Infra) -> AsyncIterator[Harness]:
    recorder = Recorder()
    consumer = EventConsumer(
        name=f"t-consumer-{uuid.uuid4().hex[:8]}",
        subject=SUBJECT,
        accepts=(LayoutChangedV1,),
        handle=recorder.handle,
        redelivery=FAST,
        deliver_policy=DeliverPolicy.NEW,  # only what this test publishes
    )
    broker = make_broker(infra.nats_url)
    subscribe(broker, consumer)
    await start_broker(broker)
    client = await nats.connect(infra.nats_url)
    js = client.jetstream()
    dlq = await js.pull_subscribe(
        f"cag.dlq.{SUBJECT}", durable=f"t-dlq-{uuid.uuid4().hex[:8]}", stream=STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
    )  # fmt: skip
    try:
        yield Harness(recorder=recorder, consumer=consumer, js=js, dlq=dlq)
    finally:
        await bounded(broker.stop(), "broker")
        await bounded(client.close(), "test client")


def _event(layout_hash: str = "h-1") -> Envelope:
    return Envelope.wrap(LayoutChangedV1(layout_id="support_agent.v1", layout_hash=layout_hash))


async def _publish(js: JetStreamContext, body: bytes, subject: str = SUBJECT) -> int:
    return (await js.publish(subject, body, headers={"Nats-Msg-Id": uuid.uuid4().hex})).seq


async def _dead_letters(dlq: JetStreamContext.PullSubscription, want: int, timeout_s: float = 20.0) -> list[Msg]:
    got: list[Msg] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError):  # nats raises both its own and the builtin one
            for msg in await dlq.fetch(10, timeout=0.5):
                got.append(msg)
                await msg.ack()
    return got


async def _settled(js: JetStreamContext, consumer: str, timeout_s: float = 10.0) -> None:
    """Wait until nothing is left for the consumer: no message waits for a (re)delivery or an ack, so
    nothing can be delivered again. (Acks and terms are fire-and-forget: the server may see them late.)"""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        info = await js.consumer_info(STREAM, consumer)
        if (info.num_pending, info.num_ack_pending) == (0, 0):
            return
        assert asyncio.get_running_loop().time() < deadline, f"consumer {consumer} never settled: {info}"
        await asyncio.sleep(0.05)


async def test_a_handler_that_always_fails_is_tried_max_deliver_times_then_dead_lettered(harness: Harness) -> None:
    poison, sentinel = _event("poison"), _event("sentinel")
    harness.recorder.poison.add(poison.event_id)
    poison_seq = await _publish(harness.js, poison.model_dump_json().encode())
    await _publish(harness.js, sentinel.model_dump_json().encode())
    # The consumer goes on while the poison waits for its next try.
    await asyncio.wait_for(harness.recorder.arrived(sentinel.event_id).wait(), 10)
    [parked] = await _dead_letters(harness.dlq, 1)
    assert parked.data == poison.model_dump_json().encode()
    assert parked.headers is not None
    assert parked.headers["cag-consumer"] == harness.consumer.name
    assert parked.headers["cag-deliveries"] == "3"
    assert parked.headers["cag-stream-sequence"] == str(poison_seq)
    assert "failed on delivery 3 of 3" in parked.headers["cag-error"]
    assert "the database is away" in parked.headers["cag-error"]
    times = harness.recorder.deliveries[poison.event_id]
    assert len(times) == FAST.max_deliver
    # Each retry waited for its backoff step (a NAK without delay would come back at once).
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= step * 0.9 for gap, step in zip(gaps, FAST.backoff_s, strict=True)), gaps
    # Terminated, not pending: JetStream will not deliver it a fourth time.
    await _settled(harness.js, harness.consumer.name)
    assert harness.recorder.deliveries[sentinel.event_id] == harness.recorder.deliveries[sentinel.event_id][:1]


async def test_misrouted_oversized_and_malformed_events_are_dead_lettered_at_once(harness: Harness) -> None:
    misrouted = Envelope.wrap(LayoutChangedV1(layout_id="l", layout_hash="h")).model_copy(
        update={"subject": "cag.invalidate.model"}
    )
    valid = _event().model_dump_json()
    oversized = (valid[:-1] + " " * MAX_BODY_BYTES + "}").encode()  # valid JSON, but too large to parse
    long_id = json.loads(valid) | {"event_id": "e" * 300}
    bodies = [misrouted.model_dump_json().encode(), oversized, json.dumps(long_id).encode(), b"\xff\xfe{"]
    for body in bodies:
        await _publish(harness.js, body)
    sentinel = _event("sentinel")
    await _publish(harness.js, sentinel.model_dump_json().encode())
    await asyncio.wait_for(harness.recorder.arrived(sentinel.event_id).wait(), 10)
    parked = await _dead_letters(harness.dlq, len(bodies))
    assert [m.data for m in parked] == bodies
    errors = [m.headers["cag-error"] for m in parked if m.headers]
    assert "is not the subject it arrived on" in errors[0]
    assert f"at most {MAX_BODY_BYTES:,} are accepted" in errors[1]
    assert "event_id" in errors[2]
    assert all(m.headers and m.headers["cag-deliveries"] == "1" for m in parked)
    assert list(harness.recorder.deliveries) == [sentinel.event_id], "no bad event reached the handler"
    await _settled(harness.js, harness.consumer.name)


async def test_an_existing_durable_gets_the_bounded_policy(infra: Infra) -> None:
    """A durable created before redelivery was bounded (max_deliver unlimited) is updated when it starts."""
    client = await nats.connect(infra.nats_url)
    name = f"t-legacy-{uuid.uuid4().hex[:8]}"
    broker = make_broker(infra.nats_url)
    try:
        js = client.jetstream()
        await js.add_consumer(STREAM, ConsumerConfig(durable_name=name, filter_subject=SUBJECT))
        assert (await js.consumer_info(STREAM, name)).config.max_deliver in (None, -1)
        subscribe(broker, EventConsumer(name=name, subject=SUBJECT, accepts=(LayoutChangedV1,),
                                        handle=Recorder().handle, redelivery=FAST))  # fmt: skip
        await start_broker(broker)
        config = (await js.consumer_info(STREAM, name)).config
        assert config.max_deliver == FAST.max_deliver
        assert config.backoff == [FAST.ack_wait_s, FAST.ack_wait_s]
    finally:
        await bounded(broker.stop(), "broker")
        await bounded(client.close(), "test client")
