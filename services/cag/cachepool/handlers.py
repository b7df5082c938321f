"""The cache pool's event consumers: a module the registry invalidated, expired or quarantined (quarantine
emits cag.module.invalidated) leaves every tier as the event arrives.

Each pool process has durables of its own (`instance` in their names): every pool must drop the module, not
one of them. A new durable starts at new events: the registry's feed (Watch from sequence 0) gives the pool
the past. Handling is idempotent (the snapshot withdraws a module once).
"""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker
from nats.js.api import DeliverPolicy

from cag.cachepool.core.snapshot import ModuleState, StateChange
from cag.cachepool.pool import CachePool
from cag.events.consumer import EventConsumer, Redelivery, subscribe
from cag.events.schemas import Envelope, ModuleEventV1, ModuleExpiredV1, ModuleInvalidatedV1

log = logging.getLogger(__name__)


def withdrawal_consumer(
    pool: CachePool, payload: type[ModuleEventV1], instance: str, redelivery: Redelivery | None = None
) -> EventConsumer[ModuleEventV1]:
    async def withdraw(envelope: Envelope, event: ModuleEventV1) -> None:
        try:
            state = ModuleState(event.state)
        except ValueError:  # a state this pool does not know: out of service all the same
            state = ModuleState.INVALIDATED
        pool.apply_change(StateChange(module_id=event.module_id, state=state))
        log.info("%s %s: module %s withdrawn (%s)", envelope.subject, envelope.event_id, event.module_id, state)

    return EventConsumer(
        name=f"cachepool-{instance}-{payload.subject.rpartition('.')[2]}",
        subject=payload.subject,
        accepts=(payload,),
        handle=withdraw,
        redelivery=redelivery or Redelivery(),
        deliver_policy=DeliverPolicy.NEW,
    )


def subscribe_withdrawals(
    broker: NatsBroker, pool: CachePool, instance: str, redelivery: Redelivery | None = None
) -> None:
    for payload in (ModuleInvalidatedV1, ModuleExpiredV1):
        subscribe(broker, withdrawal_consumer(pool, payload, instance, redelivery))
