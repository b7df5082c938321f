"""The registry's event consumers: invalidation triggers and route decisions in, idempotent by event id.

Validation, dead-lettering and bounded redelivery are the shared `cag.events.consumer`; what is left
here is what each event means to the registry.
"""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker

from cag.acl import AclScope
from cag.auth.caller import SYSTEM
from cag.events.consumer import PULL_SUB as PULL_SUB  # the pull settings, reported by `cag bench registry`
from cag.events.consumer import EventConsumer, Redelivery, subscribe
from cag.events.schemas import (
    INVALIDATION_PAYLOADS,
    AclChangedV1,
    Envelope,
    LayoutChangedV1,
    ModelRevisedV1,
    Payload,
    RouteDecidedV1,
    SourceChangedV1,
    TokenizerRetiredV1,
    UnknownSchemaError,
)
from cag.registry.core import RegistryCore
from cag.registry.core.records import RouteDecision
from cag.registry.core.triggers import AclChanged, LayoutChanged, ModelRevised, SourceChanged, TokenizerRetired, Trigger

log = logging.getLogger(__name__)
CONSUMER = "registry-invalidations"
AUDIT_CONSUMER = "registry-route-audit"


def trigger_of(payload: Payload) -> Trigger:
    """The registry trigger an ops event stands for."""
    match payload:
        case SourceChangedV1():
            return SourceChanged(tenant_id=payload.tenant_id, source_uri=payload.source_uri, checksum=payload.checksum)
        case ModelRevisedV1():
            return ModelRevised(model_name=payload.model_name, model_revision=payload.model_revision)
        case TokenizerRetiredV1():
            return TokenizerRetired(tokenizer_revision=payload.tokenizer_revision)
        case AclChangedV1():
            return AclChanged(tenant_id=payload.tenant_id, scope=AclScope(payload.scope), principal=payload.principal)
        case LayoutChangedV1():
            return LayoutChanged(layout_id=payload.layout_id, layout_hash=payload.layout_hash)
    raise UnknownSchemaError(f"{payload.subject} is not an invalidation trigger")


def decision_of(envelope: Envelope, payload: RouteDecidedV1) -> RouteDecision:
    return RouteDecision(
        event_id=envelope.event_id,
        request_id=payload.request_id,
        tenant_id=payload.tenant_id,
        route=payload.route,
        path=payload.path,
        module_ids=tuple(payload.module_ids),
        module_version=payload.module_version,
        rule=payload.rule,
        confidence=payload.confidence,
        reason=payload.reason,
        decided_at=envelope.occurred_at,
    )


def invalidation_consumer(core: RegistryCore, redelivery: Redelivery | None = None) -> EventConsumer[Payload]:
    """`cag.invalidate.*`: each trigger applied once (the store records the event id with its effect)."""

    async def apply(envelope: Envelope, payload: Payload) -> None:
        # Whoever may publish on cag.invalidate.* (NATS subject permissions) speaks for the platform.
        _, changed = await core.invalidate(SYSTEM, trigger_of(payload), event_id=envelope.event_id)
        log.info("%s %s: %d module(s) changed", envelope.subject, envelope.event_id, len(changed))

    return EventConsumer(
        name=CONSUMER,
        subject="cag.invalidate.*",
        accepts=INVALIDATION_PAYLOADS,
        handle=apply,
        redelivery=redelivery or Redelivery(),
    )


def route_audit_consumer(core: RegistryCore, redelivery: Redelivery | None = None) -> EventConsumer[RouteDecidedV1]:
    """`cag.route.decided`: the audit trail, one row per event id."""

    async def record(envelope: Envelope, payload: RouteDecidedV1) -> None:
        await core.record_route_decision(decision_of(envelope, payload))

    return EventConsumer(
        name=AUDIT_CONSUMER,
        subject=RouteDecidedV1.subject,
        accepts=(RouteDecidedV1,),
        handle=record,
        redelivery=redelivery or Redelivery(),
    )


def subscribe_invalidations(broker: NatsBroker, core: RegistryCore, redelivery: Redelivery | None = None) -> None:
    subscribe(broker, invalidation_consumer(core, redelivery))


def subscribe_route_decisions(broker: NatsBroker, core: RegistryCore, redelivery: Redelivery | None = None) -> None:
    subscribe(broker, route_audit_consumer(core, redelivery))
