"""The registry's event handlers over `RegistryCore(MemoryStore())`, on FastStream's `TestNatsBroker` and on real NATS.

Each scenario takes a bus factory and runs twice: in memory (no server: the broker hands every message to
its subscriber inside `publish`) and against the real NATS of the `infra` fixture (the production
JetStream pull consumers, each under a durable name of its own that starts at new messages, so that the
stream's history from other tests does not reach this store). The scenarios are the same code: they never
wait for time to pass, only for a sentinel — a malformed event published behind everything else on the
subject, which the consumer settles in stream order, so once its dead letter is in, every earlier
message on that subject has been applied or dead-lettered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from faststream.nats import NatsBroker, NatsMessage, TestNatsBroker
from nats.js.api import ConsumerConfig, DeliverPolicy

from cag.events.bus import CAG_STREAM, make_broker
from cag.events.consumer import EventConsumer, raw_body, start_broker, subscribe
from cag.events.schemas import DEAD_LETTER_PREFIX, STREAM, Envelope, ModelRevisedV1, RouteDecidedV1
from cag.lifecycle import bounded
from cag.registry.core import RegistryCore
from cag.registry.core.audit import AuditAction
from cag.registry.core.memory import MemoryStore
from cag.registry.core.records import ModuleRecord, RouteDecision
from cag.registry.core.states import ModuleState
from cag.registry.handlers import (
    AUDIT_CONSUMER,
    CONSUMER,
    invalidation_consumer,
    route_audit_consumer,
    subscribe_invalidations,
    subscribe_route_decisions,
)
from tests.registry_population import make_metadata

SETTLE_TIMEOUT_S = 20.0  # a bound on a stuck consumer, never a wait for something not to happen


@dataclass(frozen=True)
class DeadLetter:
    subject: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Bus:
    """A started broker with the registry's two consumers subscribed, and the dead letters it parked."""

    broker: NatsBroker
    consumers: dict[str, str]  # the registry's consumer name → its durable name on this bus
    letters: list[DeadLetter] = field(default_factory=list)
    _sentinels: dict[bytes, asyncio.Event] = field(default_factory=dict)
    _settled: int = 0  # letters up to here were returned by `settle`

    async def publish(self, subject: str, body: bytes, *, headers: dict[str, str] | None = None) -> None:
        """Publish raw bytes on `subject` in the cag stream, as any producer (or attacker) could."""
        headers = {"Nats-Msg-Id": uuid.uuid4().hex, **(headers or {})}
        await self.broker.publish(body, subject, headers=headers, stream=STREAM)

    async def publish_event(self, envelope: Envelope) -> None:
        await self.publish(envelope.subject, envelope.model_dump_json().encode())

    async def settle(self, subject: str) -> list[DeadLetter]:
        """Wait until every message published on `subject` so far is settled; the dead letters parked since
        the last `settle` (in memory, `publish` returns once its message is settled: they may be in already)."""
        body = f"sentinel {uuid.uuid4()}".encode()
        parked = self._sentinels[body] = asyncio.Event()
        await self.publish(subject, body)
        await asyncio.wait_for(parked.wait(), SETTLE_TIMEOUT_S)
        sentinel = next(i for i, letter in enumerate(self.letters) if letter.body == body)
        since, self._settled = self.letters[self._settled : sentinel], sentinel + 1
        return since

    def watch_dead_letters(self, config: ConsumerConfig | None = None) -> None:
        # A dead letter keeps its body as it came, JSON or not, under `content-type: application/json`: the
        # raw decoder keeps FastStream from parsing it (which would fail the subscriber on a malformed one).
        @self.broker.subscriber(f"{DEAD_LETTER_PREFIX}>", stream=CAG_STREAM, config=config, decoder=raw_body)
        async def parked(msg: NatsMessage) -> None:
            raw = msg.raw_message
            self.letters.append(DeadLetter(subject=raw.subject, body=raw.data, headers=dict(raw.headers or {})))
            if (sentinel := self._sentinels.get(raw.data)) is not None:
                sentinel.set()


BusFactory = Callable[[RegistryCore], AbstractAsyncContextManager[Bus]]


@asynccontextmanager
async def in_memory_bus(core: RegistryCore) -> AsyncIterator[Bus]:
    """The production wiring (`subscribe_invalidations`, `subscribe_route_decisions`) on `TestNatsBroker`."""
    broker = make_broker("nats://in-memory.invalid:4222")  # never connected: TestNatsBroker patches it
    subscribe_invalidations(broker, core)
    subscribe_route_decisions(broker, core)
    bus = Bus(broker, consumers={CONSUMER: CONSUMER, AUDIT_CONSUMER: AUDIT_CONSUMER})
    bus.watch_dead_letters()
    async with TestNatsBroker(broker):
        yield bus


def real_nats_bus(nats_url: str) -> BusFactory:
    @asynccontextmanager
    async def open_bus(core: RegistryCore) -> AsyncIterator[Bus]:
        """The registry's consumers on a real server, each under a fresh durable that starts at new messages."""
        broker = make_broker(nats_url)
        tag = uuid.uuid4().hex[:8]
        consumers: dict[str, str] = {}
        registry: tuple[EventConsumer[Any], ...] = (invalidation_consumer(core), route_audit_consumer(core))
        for consumer in registry:
            own = dataclasses.replace(consumer, name=f"{consumer.name}-t{tag}", deliver_policy=DeliverPolicy.NEW)
            subscribe(broker, own)
            consumers[consumer.name] = own.name
        bus = Bus(broker, consumers=consumers)
        bus.watch_dead_letters(ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
        await start_broker(broker)
        try:
            yield bus
        finally:
            await bounded(broker.stop(), "broker")

    return open_bus


@pytest.fixture(params=["memory", "nats"])
def open_bus(request: pytest.FixtureRequest) -> BusFactory:
    if request.param == "memory":
        return in_memory_bus
    return real_nats_bus(request.getfixturevalue("infra").nats_url)  # starts the servers only when asked for


# -- the store -------------------------------------------------------------------------------------------------

STALE_REVISION = "rev-a"
NEW_REVISION = "rev-b"


async def seeded() -> tuple[RegistryCore, MemoryStore]:
    """Four published modules: smollm2 rev-a (a root and its child), smollm2 rev-b, tinyllama rev-a."""
    store = MemoryStore()
    seeds = [
        make_metadata("old-root", model_revision=STALE_REVISION),
        make_metadata("old-child", model_revision=STALE_REVISION, route="shipping", parent_id="old-root"),
        make_metadata("current", model_revision=NEW_REVISION, tenant_id="globex"),
        make_metadata("other-model", model_name="tinyllama", model_revision=STALE_REVISION, tenant_id="initech"),
    ]
    for metadata in seeds:
        await store.register(
            ModuleRecord(metadata=metadata, source_uri=f"git://kb/{metadata.module_id}", state=ModuleState.VALIDATING)
        )
        await store.publish(metadata.module_id)
    return RegistryCore(store), store


def states(store: MemoryStore) -> dict[str, ModuleState]:
    return {module_id: record.state for module_id, record in store.modules.items()}


def snapshot(store: MemoryStore) -> tuple[object, ...]:
    """Everything an event could change: records, module events, audit entries, processed ids, decisions."""
    return dict(store.modules), list(store.outbox), list(store.audit), set(store.processed), dict(store.decisions)


def model_revised() -> Envelope:
    return Envelope.wrap(ModelRevisedV1(model_name="smollm2", model_revision=NEW_REVISION))


# -- the scenarios ---------------------------------------------------------------------------------------------


async def test_model_event_invalidates_exactly_the_matching_modules(open_bus: BusFactory) -> None:
    core, store = await seeded()
    event = model_revised()
    async with open_bus(core) as bus:
        await bus.publish_event(event)
        assert await bus.settle(event.subject) == []
    assert states(store) == {
        "old-root": ModuleState.INVALIDATED,
        "old-child": ModuleState.INVALIDATED,  # on top of an invalid parent
        "current": ModuleState.PUBLISHED,
        "other-model": ModuleState.PUBLISHED,
    }
    announced = [(c.module_id, c.state) for c in store.outbox if c.state is ModuleState.INVALIDATED]
    assert announced == [("old-child", ModuleState.INVALIDATED), ("old-root", ModuleState.INVALIDATED)]
    [entry] = [e for e in store.audit if e.action is AuditAction.INVALIDATE]
    assert (entry.event_id, entry.module_ids) == (event.event_id, ("old-child", "old-root"))


async def test_the_same_event_id_twice_applies_once(open_bus: BusFactory) -> None:
    core, store = await seeded()
    event = model_revised()
    async with open_bus(core) as bus:
        await bus.publish_event(event)
        assert await bus.settle(event.subject) == []
        # A module the trigger would hit, registered after the event was applied: a second application
        # (the same event redelivered under another message id) would invalidate it.
        late = make_metadata("late", model_revision=STALE_REVISION, tenant_id="globex", route="api")
        await store.register(ModuleRecord(metadata=late, source_uri="git://kb/late", state=ModuleState.VALIDATING))
        before = snapshot(store)
        await bus.publish_event(event)
        assert await bus.settle(event.subject) == []
    assert snapshot(store) == before
    assert store.modules["late"].state is ModuleState.VALIDATING
    assert [e.event_id for e in store.audit if e.action is AuditAction.INVALIDATE] == [event.event_id]


def _unknown_version() -> tuple[str, bytes]:
    body = model_revised().model_dump(mode="json") | {"version": 99}
    return "cag.invalidate.model", json.dumps(body).encode()


def _misrouted() -> tuple[str, bytes]:  # a model event on the tokenizer subject
    return "cag.invalidate.tokenizer", model_revised().model_dump_json().encode()


def _invalidation_on_the_audit_subject() -> tuple[str, bytes]:
    body = model_revised().model_dump(mode="json") | {"subject": RouteDecidedV1.subject}
    return RouteDecidedV1.subject, json.dumps(body).encode()


BAD_EVENTS: dict[str, tuple[Callable[[], tuple[str, bytes]], str, str]] = {
    # case: (subject and body, the consumer that parks it, what its cag-error says)
    "malformed": (lambda: ("cag.invalidate.model", b"not json at all"), CONSUMER, "not a valid envelope"),
    "unknown-schema": (_unknown_version, CONSUMER, "no schema for cag.invalidate.model version 99"),
    "misrouted": (_misrouted, CONSUMER, "is not the subject it arrived on"),
    "audit-unknown-data": (_invalidation_on_the_audit_subject, AUDIT_CONSUMER, "invalid cag.route.decided v1 data"),
}


@pytest.mark.parametrize("case", BAD_EVENTS)
async def test_a_bad_event_is_dead_lettered_and_changes_nothing(open_bus: BusFactory, case: str) -> None:
    make, consumer, error = BAD_EVENTS[case]
    subject, body = make()
    core, store = await seeded()
    before = snapshot(store)
    async with open_bus(core) as bus:
        await bus.publish(subject, body)
        [letter] = await bus.settle(subject)
        assert snapshot(store) == before
        # The consumer goes on: a valid event behind the bad one is applied.
        await bus.publish_event(model_revised())
        assert await bus.settle("cag.invalidate.model") == []
        assert store.modules["old-root"].state is ModuleState.INVALIDATED
    assert (letter.subject, letter.body) == (DEAD_LETTER_PREFIX + subject, body)
    assert error in letter.headers["cag-error"]
    assert letter.headers["cag-consumer"] == bus.consumers[consumer]
    assert letter.headers["cag-deliveries"] == "1"


async def test_malformed_json_declared_as_json_is_dead_lettered(open_bus: BusFactory) -> None:
    core, store = await seeded()
    before = snapshot(store)
    subject, body = "cag.invalidate.model", b"not json at all"
    async with open_bus(core) as bus:
        await bus.publish(subject, body, headers={"content-type": "application/json"})
        [letter] = await bus.settle(subject)
    assert (letter.subject, letter.body) == (DEAD_LETTER_PREFIX + subject, body)
    assert snapshot(store) == before


async def test_a_route_decision_is_recorded_once_in_the_audit_trail(open_bus: BusFactory) -> None:
    core, store = await seeded()
    before = states(store)
    decided = RouteDecidedV1(
        request_id="r-1", tenant_id="audit-co", route="billing", path="module",
        module_ids=["old-root", "old-child"], module_version=2, rule="intent", confidence=0.75,
    )  # fmt: skip
    event = Envelope.wrap(decided)
    async with open_bus(core) as bus:
        for _ in range(2):  # the second copy is a redelivery under another message id
            await bus.publish_event(event)
        assert await bus.settle(event.subject) == []
    assert await store.route_decisions("audit-co") == [
        RouteDecision(
            event_id=event.event_id, request_id="r-1", tenant_id="audit-co", route="billing", path="module",
            module_ids=("old-root", "old-child"), module_version=2, rule="intent", confidence=0.75, reason="",
            decided_at=event.occurred_at,
        )
    ]  # fmt: skip
    assert states(store) == before, "a decision changes no module"
