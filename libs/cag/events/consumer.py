"""Consuming events safely: decode → validate → handle, with bounded redelivery and dead letters.

Every consumer of the platform (registry today; router, cache pool, compiler, fallback next) declares
an `EventConsumer` — its durable name, subject filter, accepted payload schemas and an async handler —
and `subscribe`s it. The shared part decides what happens to each message:

- a body that is too large, not an envelope, of an unknown (subject, version), not a schema this
  consumer accepts, or whose envelope `subject` is not the subject it arrived on, is dead-lettered at
  once: no retry can fix it;
- a handler that raises `InvalidInputError` (the input is wrong) is dead-lettered at once too;
- any other handler error is transient: the message is NAKed with the policy's backoff delay (never an
  immediate redelivery, which loops hot), and on its last allowed delivery it is dead-lettered and
  terminated, so no single message can loop.

JetStream enforces the same bound (`max_deliver`, and `backoff` for deliveries whose consumer died
mid-message), so even a process that crashes on a message stops receiving it. Handlers must be
idempotent by event id: delivery is at-least-once. Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NotJSMessageError
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from cag.errors import InvalidInputError, validation_problems
from cag.events.bus import CAG_STREAM, dead_letter
from cag.events.schemas import MAX_BODY_BYTES, Envelope, Payload, UnknownSchemaError, decode

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Payload)
Handler = Callable[[Envelope, P], Awaitable[None]]

# One message per fetch: events apply in stream order, and FastStream 0.7.8 lets the builtin
# TimeoutError of an idle multi-message fetch escape as a logged error (single fetches raise the nats one).
PULL_SUB = PullSub(batch_size=1, timeout=1.0)


class InvalidEventError(ValueError):
    """A message no retry can fix (malformed, oversized, unknown, misrouted): it is dead-lettered at once."""


@dataclass(frozen=True, kw_only=True)
class Redelivery:
    """How often, and how far apart, a failing message is tried before it is dead-lettered.

    Delivery n (1-based) that fails transiently is NAKed with `backoff_s[n-1]` (the last value repeats);
    delivery `max_deliver` that fails is dead-lettered. `ack_wait_s` is how long one delivery may run
    before JetStream assumes its consumer died and delivers it again.
    """

    max_deliver: int = 6
    backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
    ack_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_deliver < 1:
            raise ValueError(f"max_deliver must be >= 1, got {self.max_deliver}")
        if not self.backoff_s or min(self.backoff_s) <= 0 or self.ack_wait_s <= 0:
            raise ValueError("backoff_s needs at least one delay, and every delay and ack_wait_s must be > 0")

    def delay_after(self, delivery: int) -> float:
        """Seconds to wait before redelivering a message whose delivery `delivery` failed."""
        return self.backoff_s[min(max(delivery, 1), len(self.backoff_s)) - 1]

    def is_last(self, delivery: int) -> bool:
        return delivery >= self.max_deliver

    def consumer_config(self) -> ConsumerConfig:
        """The JetStream side of the policy. JetStream's `backoff` schedules redeliveries after an ack
        timeout (a consumer that died mid-message) and replaces `ack_wait`, so no step is shorter than
        `ack_wait_s` (a slow handler is not redelivered under its own feet); JetStream requires fewer
        steps than `max_deliver`."""
        steps = [max(self.ack_wait_s, d) for d in self.backoff_s][: self.max_deliver - 1]
        return ConsumerConfig(max_deliver=self.max_deliver, ack_wait=self.ack_wait_s, backoff=steps or None)


class Outcome(StrEnum):
    APPLIED = "applied"  # the handler ran (or found nothing to do): ack
    RETRY = "retry"  # a transient failure before the last delivery: NAK with a delay
    DEAD_LETTER = "dead-letter"  # park on cag.dlq.<subject>, then terminate


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    error: str = ""
    delay_s: float = 0.0


def parse_event(body: bytes, *, subject: str, accepts: tuple[type[P], ...]) -> tuple[Envelope, P]:
    """The envelope and typed payload of a message that arrived on `subject`; `InvalidEventError` otherwise."""
    if len(body) > MAX_BODY_BYTES:  # refused before parsing: the size alone is the verdict
        raise InvalidEventError(f"body is {len(body):,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as e:
        raise InvalidEventError(f"not a valid envelope: {validation_problems(e, root='body')}") from None
    # The event id is the consumer's idempotency key: an envelope without one would get a fresh default
    # on every delivery and be applied again on each.
    if "event_id" not in envelope.model_fields_set:
        raise InvalidEventError("not a valid envelope: event_id: Field required")
    # A producer may only speak for the subject it published on (subject-level permissions guard that).
    if envelope.subject != subject:
        raise InvalidEventError(f"envelope subject {envelope.subject!r} is not the subject it arrived on, {subject!r}")
    try:
        payload = decode(envelope)
    except UnknownSchemaError as e:
        raise InvalidEventError(str(e)) from None
    except ValidationError as e:
        raise InvalidEventError(
            f"invalid {envelope.subject} v{envelope.version} data: {validation_problems(e, root='body')}"
        ) from None
    if not isinstance(payload, accepts):
        raise InvalidEventError(f"{envelope.subject} is not an event this consumer handles")
    return envelope, payload


@dataclass(frozen=True, kw_only=True)
class EventConsumer(Generic[P]):
    """One durable consumer: what it reads, what it accepts, what it does, how hard it retries."""

    name: str  # the JetStream durable name, also the cag-consumer header of its dead letters
    subject: str  # the filter subject (wildcards allowed)
    accepts: tuple[type[P], ...]
    handle: Handler[P]
    redelivery: Redelivery = field(default_factory=Redelivery)
    # Where a new durable starts (an existing one keeps its position): ALL replays the stream's history.
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL

    async def judge(self, body: bytes, *, subject: str, delivery: int) -> Verdict:
        """Parse, validate and handle one delivery; the verdict says how to settle it. Never raises
        (but lets cancellation through): whatever a handler does, the message is settled."""
        try:
            envelope, payload = parse_event(body, subject=subject, accepts=self.accepts)
        except InvalidEventError as e:
            return Verdict(Outcome.DEAD_LETTER, str(e))
        try:
            await self.handle(envelope, payload)
        except InvalidInputError as e:  # the handler found the input wrong: retrying cannot help
            return Verdict(Outcome.DEAD_LETTER, f"{type(e).__name__}: {e}")
        except Exception as e:  # anything else may pass (the database away): retry, within bounds
            return self._failed(envelope, delivery, e)
        return Verdict(Outcome.APPLIED)

    def _failed(self, envelope: Envelope, delivery: int, error: Exception) -> Verdict:
        policy = self.redelivery
        if policy.is_last(delivery):
            return Verdict(Outcome.DEAD_LETTER, f"failed on delivery {delivery} of {policy.max_deliver}: {error!r}")
        delay = policy.delay_after(delivery)
        log.warning(
            "%s: %s %s failed on delivery %d of %d (retrying in %g s): %r",
            self.name, envelope.subject, envelope.event_id, delivery, policy.max_deliver, delay, error,
        )  # fmt: skip
        return Verdict(Outcome.RETRY, repr(error), delay)


def _position(msg: Msg) -> tuple[int, int | None]:
    """(delivery number, stream sequence) of a message, from its JetStream metadata.

    Every message a JetStream consumer delivers carries that metadata. FastStream's in-memory
    `TestNatsBroker` hands subscribers plain messages without it (no `$JS.ACK` reply subject): such a
    message is taken as a first delivery with no stream sequence, so the unit tests drive this same code.
    """
    try:
        metadata = msg.metadata
    except NotJSMessageError:
        return 1, None
    return metadata.num_delivered, metadata.sequence.stream


async def settle(broker: NatsBroker, consumer: EventConsumer[P], msg: Msg) -> Verdict:
    """Judge one JetStream message and ack, NAK (with delay) or dead-letter and terminate it."""
    delivery, stream_sequence = _position(msg)
    verdict = await consumer.judge(msg.data, subject=msg.subject, delivery=delivery)
    if verdict.outcome is Outcome.APPLIED:
        await msg.ack()
    elif verdict.outcome is Outcome.RETRY:
        await msg.nak(delay=verdict.delay_s)
    else:
        await _dead_letter(broker, consumer, msg, verdict.error, delivery, stream_sequence)
    return verdict


async def _dead_letter(
    broker: NatsBroker, consumer: EventConsumer[P], msg: Msg, error: str, delivery: int, stream_sequence: int | None
) -> None:
    try:
        await dead_letter(
            broker,
            subject=msg.subject,
            body=msg.data,
            error=error,
            consumer=consumer.name,
            deliveries=delivery,
            stream_sequence=stream_sequence,
        )
    except (NatsError, TimeoutError, OSError) as e:
        if not consumer.redelivery.is_last(delivery):  # try again later rather than lose it
            await msg.nak(delay=consumer.redelivery.delay_after(delivery))
            return
        # JetStream would not deliver it again anyway; the message itself stays in the stream.
        log.error(
            "%s: could not dead-letter stream message %s (%s) after its last delivery: %r",
            consumer.name, stream_sequence, error, e,
        )  # fmt: skip
    await msg.term()


# The consumers subscribed on each broker, so that `start_broker` can bring their JetStream settings up to date.
_SUBSCRIBED: WeakKeyDictionary[NatsBroker, list[tuple[str, EventConsumer[Any]]]] = WeakKeyDictionary()


async def raw_body(msg: NatsMessage) -> bytes:
    """The body as it arrived. FastStream would otherwise parse it by its content-type before any handler
    runs, and a malformed body declared `application/json` (as docs/events.md recommends) would fail there,
    unacknowledged and never dead-lettered; `settle` validates every byte itself."""
    return msg.body


def subscribe(broker: NatsBroker, consumer: EventConsumer[P], *, stream: JStream = CAG_STREAM) -> None:
    """A durable pull consumer that settles every message itself (FastStream's ack policy is MANUAL)."""

    @broker.subscriber(
        consumer.subject,
        stream=stream,
        durable=consumer.name,
        pull_sub=PULL_SUB,
        config=consumer.redelivery.consumer_config().evolve(deliver_policy=consumer.deliver_policy),
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_body,
    )
    async def on_message(msg: NatsMessage) -> None:
        await settle(broker, consumer, msg.raw_message)

    _SUBSCRIBED.setdefault(broker, []).append((stream.name, consumer))


async def start_broker(broker: NatsBroker) -> None:
    """Start the broker, then apply each subscribed consumer's redelivery policy to its durable.

    JetStream keeps the settings a durable was created with, and a subscriber binds to an existing
    durable without changing them: a consumer created before this policy existed (unbounded
    max_deliver) would keep them forever. Updating `max_deliver`, `ack_wait` and `backoff` in place
    keeps the consumer's position.
    """
    await broker.start()
    js = broker.connection.jetstream()
    for stream, consumer in _SUBSCRIBED.get(broker, []):
        current = (await js.consumer_info(stream, consumer.name)).config
        wanted = consumer.redelivery.consumer_config()
        updated = current.evolve(max_deliver=wanted.max_deliver, ack_wait=wanted.ack_wait, backoff=wanted.backoff)
        await js.add_consumer(stream, config=updated)
