"""The router's event consumer: a tenant's route rules changed (cag.routes.updated) → fetch the new version.

Each router process has a durable of its own (`instance` in its name): every router must see every update. A
new durable starts at new events; the rules a router needs before that it fetches itself (on first use and
after the registry's feed is caught up), and the periodic reconcile covers an event lost on the way.
"""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker
from nats.js.api import DeliverPolicy

from cag.events.consumer import EventConsumer, Redelivery, subscribe
from cag.events.schemas import Envelope, RoutesUpdatedV1
from cag.router.routes import RegistryRoutes

log = logging.getLogger(__name__)


def rules_consumer(routes: RegistryRoutes, instance: str, redelivery: Redelivery) -> EventConsumer[RoutesUpdatedV1]:
    async def refresh(envelope: Envelope, event: RoutesUpdatedV1) -> None:
        await routes.on_rules_updated(event.tenant_id, event.version)
        log.info("%s %s: tenant %s rules v%d", envelope.subject, envelope.event_id, event.tenant_id, event.version)

    return EventConsumer(
        name=f"router-{instance}-routes",
        subject=RoutesUpdatedV1.subject,
        accepts=(RoutesUpdatedV1,),
        handle=refresh,
        redelivery=redelivery,
        deliver_policy=DeliverPolicy.NEW,
    )


def subscribe_rule_updates(broker: NatsBroker, routes: RegistryRoutes, instance: str, redelivery: Redelivery) -> None:
    subscribe(broker, rules_consumer(routes, instance, redelivery))
