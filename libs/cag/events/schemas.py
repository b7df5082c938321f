"""Versioned event schemas. Every event is an envelope (id, subject, version, time) around a typed payload.

Ops automation publishes the `cag.invalidate.*` events; the registry publishes the
`cag.module.*` events through its outbox; the router publishes `cag.route.decided`.
The envelope's `event_id` is also the JetStream `Nats-Msg-Id`, so duplicates are
dropped by the server and, failing that, by the consumers' processed-event table.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from cag.kvmodule import AclScope

STREAM = "cag"
STREAM_SUBJECTS = ["cag.>"]
DEAD_LETTER_PREFIX = "cag.dlq."

Id = Annotated[str, Field(min_length=1, max_length=256)]


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    subject: ClassVar[str]
    schema_version: ClassVar[int] = 1


class SourceChangedV1(Payload):
    subject = "cag.invalidate.source"
    tenant_id: Id
    source_uri: Id
    checksum: Id  # the source's new canonical checksum


class ModelRevisedV1(Payload):
    subject = "cag.invalidate.model"
    model_name: Id
    model_revision: Id  # the new revision; modules of any other revision are invalid


class TokenizerRetiredV1(Payload):
    subject = "cag.invalidate.tokenizer"
    tokenizer_revision: Id  # the withdrawn revision


class AclChangedV1(Payload):
    subject = "cag.invalidate.acl"
    tenant_id: Id
    scope: Literal[AclScope.TENANT, AclScope.WORKSPACE, AclScope.USER]
    principal: str = ""  # a workspace or user id; empty means the whole scope


class LayoutChangedV1(Payload):
    subject = "cag.invalidate.layout"
    layout_id: Id  # e.g. support_agent.v1
    layout_hash: Id  # the layout's new hash


class ModuleEventV1(Payload):
    """A module changed state in the registry."""

    module_id: Id
    tenant_id: Id
    route: Id
    version: int | None
    state: str
    reason: str = ""
    chain_hash: str = ""
    trigger_event_id: str = ""  # the invalidation event that caused it, if any


class ModulePublishedV1(ModuleEventV1):
    subject = "cag.module.published"


class ModuleInvalidatedV1(ModuleEventV1):
    subject = "cag.module.invalidated"


class ModuleExpiredV1(ModuleEventV1):
    subject = "cag.module.expired"


class RouteDecidedV1(Payload):
    subject = "cag.route.decided"
    request_id: Id
    tenant_id: Id
    route: str
    path: Literal["module", "fallback"]
    module_ids: list[str] = []
    module_version: int | None = None
    rule: str = ""
    confidence: float = 1.0
    reason: str = ""


INVALIDATION_PAYLOADS: tuple[type[Payload], ...] = (
    SourceChangedV1,
    ModelRevisedV1,
    TokenizerRetiredV1,
    AclChangedV1,
    LayoutChangedV1,
)
_ALL_PAYLOADS: tuple[type[Payload], ...] = (
    *INVALIDATION_PAYLOADS,
    ModulePublishedV1,
    ModuleInvalidatedV1,
    ModuleExpiredV1,
    RouteDecidedV1,
)
PAYLOADS: dict[tuple[str, int], type[Payload]] = {(p.subject, p.schema_version): p for p in _ALL_PAYLOADS}


class Envelope(BaseModel):
    """The JSON body of every message: `data` is validated against (subject, version) by `decode`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    subject: str
    version: int
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict[str, object]

    @classmethod
    def wrap(cls, payload: Payload, *, event_id: str | None = None) -> Envelope:
        return cls(
            event_id=event_id or str(uuid.uuid4()),
            subject=payload.subject,
            version=payload.schema_version,
            data=payload.model_dump(mode="json"),
        )


class UnknownSchemaError(ValueError):
    """An event whose (subject, version) this build does not know: it is dead-lettered, not retried."""


def decode(envelope: Envelope) -> Payload:
    schema = PAYLOADS.get((envelope.subject, envelope.version))
    if schema is None:
        raise UnknownSchemaError(f"no schema for {envelope.subject} version {envelope.version}")
    return schema.model_validate(envelope.data)
