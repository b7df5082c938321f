"""Versioned event schemas. Every event is an envelope (id, subject, version, time) around a typed payload.

Ops automation publishes the `cag.invalidate.*` events; the registry publishes the
`cag.module.*` events through its outbox; the router publishes `cag.route.decided`; the fallback
service publishes `cag.fallback.served` and `cag.candidate.proposed`.
The envelope's `event_id` is also the JetStream `Nats-Msg-Id`, so duplicates are
dropped by the server and, failing that, by the consumers' processed-event table.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from cag.acl import AclScope
from cag.errors import InvalidFieldError
from cag.identifiers import MAX_EVENT_ID, MAX_MODULE_ID, MAX_NAME, MAX_URI
from cag.identifiers import check_event_id as _check_event_id
from cag.identifiers import check_module_id as _check_module_id
from cag.identifiers import check_name as _check_name
from cag.identifiers import check_text as _check_text

STREAM = "cag"
STREAM_SUBJECTS = ["cag.>"]
DEAD_LETTER_PREFIX = "cag.dlq."

# Limits of the event contract (docs/events.md §Limits). Every string ends in a registry column or a
# log line, so each is bounded by its column (services/cag/registry/db/schema.py) and checked before
# anything reaches the database: a value that does not fit would fail the handler on every redelivery.
MAX_BODY_BYTES = 64 * 1024  # a larger body is dead-lettered without being parsed
MAX_SUBJECT = 128  # outbox.subject is varchar(128)
MAX_SCHEMA_VERSION = 1_000
MAX_REVISION = 64  # model_revision, tokenizer_revision, layout_hash, source_checksum, chain_hash: varchar(64)
MAX_STATE = 16  # modules.state is varchar(16)
MAX_RULE = 1_024
MAX_REASON = 8_192  # a module event's reason quotes its trigger, which can carry a 2048-character URI
MAX_MODULE_IDS = 64  # modules in one served chain
MAX_INT32 = 2**31 - 1  # Postgres integer columns (module_version)
MAX_EVIDENCE = 64  # evidence chunks behind one fallback answer (the fallback's top-k is at most this)
MAX_ANSWER = 16_384  # a fallback answer is cut to this many characters in its event (the body stays under 64 KiB)
MAX_CANDIDATE_QUERIES = 5  # representative queries a proposal names (the Candidates RPC lists them all)


def _rule(check: Callable[[str], str]) -> AfterValidator:
    """A pydantic validator from a `cag.identifiers` rule; pydantic names the field, so the rule's label goes."""

    def validate(value: str) -> str:
        try:
            return check(value)
        except InvalidFieldError as e:
            raise ValueError(str(e).removeprefix(f"{e.field} ")) from None

    return AfterValidator(validate)


def _text(max_chars: int, *, required: bool) -> AfterValidator:
    return _rule(lambda v: _check_text("value", v, max_chars=max_chars, required=required))


def _optional(check: Callable[[str], str]) -> Callable[[str], str]:
    return lambda v: v if v == "" else check(v)


# max_length first: a megabyte of input is refused by its length before any regular expression runs.
EventId = Annotated[str, Field(strict=True, max_length=MAX_EVENT_ID), _rule(_check_event_id)]
OptionalEventId = Annotated[str, Field(strict=True, max_length=MAX_EVENT_ID), _rule(_optional(_check_event_id))]
Name = Annotated[str, Field(strict=True, max_length=MAX_NAME), _rule(lambda v: _check_name("value", v))]
OptionalName = Annotated[
    str, Field(strict=True, max_length=MAX_NAME), _rule(_optional(lambda v: _check_name("value", v)))
]
ModuleId = Annotated[str, Field(strict=True, max_length=MAX_MODULE_ID), _rule(_check_module_id)]
Revision = Annotated[str, Field(strict=True, max_length=MAX_REVISION), _text(MAX_REVISION, required=True)]
OptionalRevision = Annotated[str, Field(strict=True, max_length=MAX_REVISION), _text(MAX_REVISION, required=False)]
Label = Annotated[str, Field(strict=True, max_length=MAX_NAME), _text(MAX_NAME, required=True)]
Uri = Annotated[str, Field(strict=True, max_length=MAX_URI), _text(MAX_URI, required=True)]
Text = Annotated[str, Field(strict=True, max_length=MAX_REASON), _text(MAX_REASON, required=False)]
RuleText = Annotated[str, Field(strict=True, max_length=MAX_RULE), _text(MAX_RULE, required=False)]
Version = Annotated[int, Field(strict=True, ge=1, le=MAX_INT32)]
Subject = Annotated[str, StringConstraints(strict=True, max_length=MAX_SUBJECT, pattern=r"^[a-z0-9_.-]+$")]


def new_event_id() -> str:
    return str(uuid.uuid4())


class Payload(BaseModel):
    # Closed and strict: an unknown field or a value of the wrong JSON type is a producer bug, dead-lettered.
    model_config = ConfigDict(frozen=True, extra="forbid")
    subject: ClassVar[str]
    schema_version: ClassVar[int] = 1


class SourceChangedV1(Payload):
    subject = "cag.invalidate.source"
    tenant_id: Name
    source_uri: Uri
    checksum: Revision  # the source's new canonical checksum


class ModelRevisedV1(Payload):
    subject = "cag.invalidate.model"
    model_name: Label
    model_revision: Revision  # the new revision; modules of any other revision are invalid


class TokenizerRetiredV1(Payload):
    subject = "cag.invalidate.tokenizer"
    tokenizer_revision: Revision  # the withdrawn revision


class AclChangedV1(Payload):
    subject = "cag.invalidate.acl"
    tenant_id: Name
    scope: Literal[AclScope.TENANT, AclScope.WORKSPACE, AclScope.USER]
    principal: OptionalName = ""  # a workspace or user id; "" means the whole scope


class LayoutChangedV1(Payload):
    subject = "cag.invalidate.layout"
    layout_id: Label  # e.g. support_agent.v1
    layout_hash: Revision  # the layout's new hash


class ModuleEventV1(Payload):
    """A module changed state in the registry."""

    module_id: ModuleId
    tenant_id: Name
    route: Name
    version: Version | None
    state: Annotated[str, Field(strict=True, max_length=MAX_STATE), _text(MAX_STATE, required=True)]
    reason: Text = ""
    chain_hash: OptionalRevision = ""
    trigger_event_id: OptionalEventId = ""  # the invalidation event that caused it, if any


class ModulePublishedV1(ModuleEventV1):
    subject = "cag.module.published"


class ModuleInvalidatedV1(ModuleEventV1):
    subject = "cag.module.invalidated"


class ModuleExpiredV1(ModuleEventV1):
    subject = "cag.module.expired"


class RouteDecidedV1(Payload):
    subject = "cag.route.decided"
    request_id: Label
    tenant_id: Name
    route: OptionalName  # "" when no route matched
    path: Literal["module", "fallback"]
    module_ids: Annotated[list[ModuleId], Field(strict=True, max_length=MAX_MODULE_IDS)] = []
    module_version: Version | None = None
    rule: RuleText = ""
    confidence: Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    reason: RuleText = ""


class RoutesUpdatedV1(Payload):
    """A tenant's route rules have a new version: routers fetch it (GetRouteRules) and route by it."""

    subject = "cag.routes.updated"
    tenant_id: Name
    version: Version


class CompileFailedV1(Payload):
    """The compiler could not rebuild a module that was invalidated or expired: its route stays on the fallback
    path (the old version is not served) until a compile succeeds."""

    subject = "cag.compile.failed"
    module_id: ModuleId  # the module that was to be replaced
    tenant_id: Name
    route: Name
    job_id: Label
    reason: Text
    trigger_event_id: OptionalEventId = ""  # the module event that started the recompile


class FallbackServedV1(Payload):
    """The fallback service answered a query from retrieved evidence (promotion clusters these)."""

    subject = "cag.fallback.served"
    request_id: Label
    tenant_id: Name
    query: Text
    route: OptionalName = ""  # the route that was tried, "" when none matched
    reason: Text = ""  # why fallback answered (no confident route, stale module, ...)
    evidence_ids: Annotated[list[Label], Field(strict=True, max_length=MAX_EVIDENCE)] = []  # chunk ids, prompt order
    source_uris: Annotated[list[Uri], Field(strict=True, max_length=MAX_EVIDENCE)] = []  # their sources, distinct
    answer: Annotated[str, Field(strict=True, max_length=MAX_ANSWER), _text(MAX_ANSWER, required=False)] = ""
    latency_s: Annotated[float, Field(strict=True, ge=0.0, allow_inf_nan=False)]


class CandidateProposedV1(Payload):
    """Repeated similar fallbacks reached the proposal threshold: a promotion candidate awaits review."""

    subject = "cag.candidate.proposed"
    candidate_id: Label
    tenant_id: Name
    count: Annotated[int, Field(strict=True, ge=1)]  # fallbacks in the cluster when it was proposed
    queries: Annotated[list[Text], Field(strict=True, max_length=MAX_CANDIDATE_QUERIES)]  # most frequent first
    evidence_ids: Annotated[list[Label], Field(strict=True, max_length=MAX_EVIDENCE)]  # of the most frequent answer


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
    RoutesUpdatedV1,
    CompileFailedV1,
    FallbackServedV1,
    CandidateProposedV1,
)
PAYLOADS: dict[tuple[str, int], type[Payload]] = {(p.subject, p.schema_version): p for p in _ALL_PAYLOADS}


class Envelope(BaseModel):
    """The JSON body of every message: `data` is validated against (subject, version) by `decode`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_id: EventId = Field(default_factory=new_event_id)
    subject: Subject
    version: Annotated[int, Field(strict=True, ge=1, le=MAX_SCHEMA_VERSION)]
    # An instant: a time without a zone would be read in whatever zone the database runs in.
    occurred_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict[str, object]

    @classmethod
    def wrap(cls, payload: Payload, *, event_id: str | None = None) -> Envelope:
        return cls(
            event_id=event_id or new_event_id(),
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
