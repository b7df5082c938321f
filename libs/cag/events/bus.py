"""The NATS JetStream connection every service shares: one stream for `cag.>`, publishing with dedup ids."""

from __future__ import annotations

import logging

from faststream.nats import JStream, NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware

from cag.events.schemas import DEAD_LETTER_PREFIX, STREAM, STREAM_SUBJECTS, Envelope

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 2.0

# Durable storage, and a dedup window long enough to absorb an outbox relay retrying after an outage.
CAG_STREAM = JStream(name=STREAM, subjects=STREAM_SUBJECTS, declare=True, duplicate_window=600.0)


def make_broker(nats_url: str) -> NatsBroker:
    """A broker that carries trace context in message headers and keeps reconnecting when NATS is away."""
    return NatsBroker(
        nats_url,
        middlewares=[NatsTelemetryMiddleware()],
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        logger=log,
    )


async def publish_event(broker: NatsBroker, envelope: Envelope) -> None:
    """Publish to JetStream and wait for its ack; the event id is the Nats-Msg-Id, so a retry is deduplicated."""
    await broker.publish(
        envelope.model_dump_json().encode(),
        envelope.subject,
        headers={"Nats-Msg-Id": envelope.event_id, "content-type": "application/json"},
        stream=STREAM,
        timeout=PUBLISH_TIMEOUT_S,
    )


async def dead_letter(broker: NatsBroker, *, subject: str, body: bytes, error: str, consumer: str) -> None:
    """Park an event no handler can process on `cag.dlq.<subject>`, so the consumer can move on."""
    log.error("dead-lettering %s event for %s: %s", subject, consumer, error)
    await broker.publish(
        body,
        DEAD_LETTER_PREFIX + subject,
        headers={"cag-error": error[:512], "cag-consumer": consumer},
        stream=STREAM,
        timeout=PUBLISH_TIMEOUT_S,
    )
