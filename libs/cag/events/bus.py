"""The NATS JetStream connection every service shares: one stream for `cag.>`, publishing with dedup ids."""

from __future__ import annotations

import logging

from faststream.nats import JStream, NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware

from cag.events.schemas import DEAD_LETTER_PREFIX, STREAM, STREAM_SUBJECTS, Envelope

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 2.0
MAX_HEADER_CHARS = 512

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


async def dead_letter(
    broker: NatsBroker,
    *,
    subject: str,
    body: bytes,
    error: str,
    consumer: str,
    deliveries: int = 1,
    stream_sequence: int | None = None,
) -> None:
    """Park an event no handler can process on `cag.dlq.<subject>`, so the consumer can move on.

    The body is kept unchanged; the headers say why (`cag-error`), who gave up (`cag-consumer`) and after
    how many deliveries (`cag-deliveries`). With the stream sequence, a retried dead-lettering is deduplicated.
    """
    log.error("dead-lettering %s event for %s after %d deliveries: %s", subject, consumer, deliveries, error)
    headers = {
        "cag-error": header_value(error),
        "cag-consumer": header_value(consumer),
        "cag-deliveries": str(deliveries),
        "content-type": "application/json",
    }
    if stream_sequence is not None:
        headers["cag-stream-sequence"] = str(stream_sequence)
        headers["Nats-Msg-Id"] = f"dlq:{consumer}:{stream_sequence}"
    await broker.publish(body, DEAD_LETTER_PREFIX + subject, headers=headers, stream=STREAM, timeout=PUBLISH_TIMEOUT_S)


def header_value(text: str, limit: int = MAX_HEADER_CHARS) -> str:
    """Text fit for a NATS header: one line of printable ASCII (a newline would end the header block), bounded."""
    flat = "".join(c if " " <= c < "\x7f" else " " for c in text.encode("ascii", "backslashreplace").decode())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
