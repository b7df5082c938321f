"""Promotion's event consumers: served fallbacks counted into candidates, published modules promoting approved
ones. Idempotent: a served event is counted once per event id; promoting a promoted candidate changes nothing."""

from __future__ import annotations

from faststream.nats import NatsBroker

from cag.events.consumer import EventConsumer, Redelivery, subscribe
from cag.events.schemas import Envelope, FallbackServedV1, ModulePublishedV1
from cag.fallback.promotion import Promotion


def served_consumer(promotion: Promotion, group: str, redelivery: Redelivery) -> EventConsumer[FallbackServedV1]:
    async def count(envelope: Envelope, payload: FallbackServedV1) -> None:
        await promotion.served(envelope, payload)

    return EventConsumer(
        name=f"{group}-candidates",
        subject=FallbackServedV1.subject,
        accepts=(FallbackServedV1,),
        handle=count,
        redelivery=redelivery,
    )


def published_consumer(promotion: Promotion, group: str, redelivery: Redelivery) -> EventConsumer[ModulePublishedV1]:
    async def promote(envelope: Envelope, payload: ModulePublishedV1) -> None:
        await promotion.module_published(envelope, payload)

    return EventConsumer(
        name=f"{group}-promotions",
        subject=ModulePublishedV1.subject,
        accepts=(ModulePublishedV1,),
        handle=promote,
        redelivery=redelivery,
    )


def subscribe_promotion(broker: NatsBroker, promotion: Promotion, group: str, redelivery: Redelivery) -> None:
    subscribe(broker, served_consumer(promotion, group, redelivery))
    subscribe(broker, published_consumer(promotion, group, redelivery))
