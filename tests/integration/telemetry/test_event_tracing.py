"""An event published inside a trace is handled inside the same trace (real NATS): the brokers of
cag.events carry the W3C traceparent in message headers."""

from __future__ import annotations

import asyncio
import uuid

from nats.js.api import DeliverPolicy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cag.events.bus import make_broker, publish_event
from cag.events.consumer import EventConsumer, start_broker, subscribe
from cag.events.schemas import Envelope, LayoutChangedV1
from cag.lifecycle import bounded
from cag.telemetry import configure_tracing, current_trace_id, span
from tests.infra_fixtures import Infra


async def test_a_consumed_event_continues_the_publishers_trace(infra: Infra) -> None:
    configure_tracing("cag-tests", exporter=InMemorySpanExporter())
    handled: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handle(envelope: Envelope, payload: LayoutChangedV1) -> None:
        handled.set_result(current_trace_id())

    consumer = EventConsumer(
        name=f"t-traced-{uuid.uuid4().hex[:8]}",
        subject=LayoutChangedV1.subject,
        accepts=(LayoutChangedV1,),
        handle=handle,
        deliver_policy=DeliverPolicy.NEW,  # only what this test publishes
    )
    subscriber, publisher = make_broker(infra.nats_url), make_broker(infra.nats_url)
    subscribe(subscriber, consumer)
    await start_broker(subscriber)
    await publisher.start()
    try:
        with span("publisher"):
            published_in = current_trace_id()
            await publish_event(publisher, Envelope.wrap(LayoutChangedV1(layout_id="l.v1", layout_hash="h-1")))
        assert await asyncio.wait_for(handled, 10) == published_in != ""
    finally:
        await bounded(publisher.stop(), "publisher")
        await bounded(subscriber.stop(), "subscriber")
