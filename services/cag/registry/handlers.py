"""The registry's event handlers: invalidation triggers in, idempotent by event id; bad events dead-lettered."""

from __future__ import annotations

import logging

from faststream import AckPolicy
from faststream.nats import NatsBroker, NatsMessage, PullSub
from pydantic import ValidationError

from cag.events.bus import CAG_STREAM, dead_letter
from cag.events.schemas import (
    AclChangedV1,
    Envelope,
    LayoutChangedV1,
    ModelRevisedV1,
    Payload,
    RouteDecidedV1,
    SourceChangedV1,
    TokenizerRetiredV1,
    UnknownSchemaError,
    decode,
)
from cag.kvmodule import AclScope
from cag.registry.core import RegistryCore
from cag.registry.records import RouteDecision
from cag.registry.triggers import AclChanged, LayoutChanged, ModelRevised, SourceChanged, TokenizerRetired, Trigger

log = logging.getLogger(__name__)
CONSUMER = "registry-invalidations"
# One message per fetch: events apply in stream order, and FastStream 0.7.8 lets the builtin
# TimeoutError of an idle multi-message fetch escape as a logged error (single fetches raise the nats one).
PULL_SUB = PullSub(batch_size=1, timeout=1.0)


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


def subscribe_invalidations(broker: NatsBroker, core: RegistryCore) -> None:
    """A durable pull consumer on `cag.invalidate.*`; redelivery is harmless (the store dedups by event id)."""

    # NACK on an unexpected error (the database away, say): JetStream redelivers the event later and
    # the store's event-id check makes the retry harmless. Bad events never get here: they are parked.
    @broker.subscriber(
        "cag.invalidate.*", stream=CAG_STREAM, durable=CONSUMER, pull_sub=PULL_SUB, ack_policy=AckPolicy.NACK_ON_ERROR
    )
    async def on_invalidation(msg: NatsMessage) -> None:
        body = msg.body
        try:
            envelope = Envelope.model_validate_json(body)
            trigger = trigger_of(decode(envelope))
        except (UnknownSchemaError, ValidationError, ValueError) as e:
            await dead_letter(broker, subject=msg.raw_message.subject, body=body, error=str(e), consumer=CONSUMER)
            return  # acked: a malformed event must not block the ones behind it
        _, changed = await core.invalidate(trigger, event_id=envelope.event_id)
        log.info("%s %s: %d module(s) changed", envelope.subject, envelope.event_id, len(changed))


AUDIT_CONSUMER = "registry-route-audit"


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


def subscribe_route_decisions(broker: NatsBroker, core: RegistryCore) -> None:
    """The audit trail: every `cag.route.decided` event becomes one row, once."""

    @broker.subscriber(
        RouteDecidedV1.subject,
        stream=CAG_STREAM,
        durable=AUDIT_CONSUMER,
        pull_sub=PULL_SUB,
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_route_decided(msg: NatsMessage) -> None:
        try:
            envelope = Envelope.model_validate_json(msg.body)
            payload = decode(envelope)
            if not isinstance(payload, RouteDecidedV1):
                raise UnknownSchemaError(f"{envelope.subject} is not a route decision")
        except (UnknownSchemaError, ValidationError, ValueError) as e:
            await dead_letter(
                broker, subject=msg.raw_message.subject, body=msg.body, error=str(e), consumer=AUDIT_CONSUMER
            )
            return
        await core.record_route_decision(decision_of(envelope, payload))
