"""Property-based fuzzing of any event consumer (hypothesis): hostile message bodies and the oracle.

A consumer is described by what `cag.events.consumer.EventConsumer` already holds — the payload
schemas it accepts and its subject filter — so the consumers that follow the registry's (router,
cache pool, compiler, fallback) get the same fuzzing by passing their own `EventConsumer`.

- `valid_cases(consumer)`: well-formed envelopes of every accepted schema (random ids and times).
- `hostile_cases(consumer)`: bodies that are invalid *by construction*, whatever the field: malformed
  or truncated JSON, bytes that are not UTF-8, bodies over the size limit, unknown versions and
  subjects, an envelope subject other than the arrival subject, a bad or over-long event id, a NUL or
  another control character, a string longer than any column, a huge integer, a value of the wrong
  JSON type, an unknown field, a missing required field, a time without a zone.
- `any_cases(consumer)`: both, plus arbitrary JSON and bytes whose validity is not known in advance.
- `check_accepted(...)`: what anything the consumer accepts must satisfy (every string fits, no NUL).

The oracle for a consumer: a hostile case is dead-lettered on its first delivery and never reaches the
handler; a valid case is applied (or ignored, when its event id was seen); nothing is retried forever.
"""

from __future__ import annotations

import json
import os
import string
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cag.events.consumer import EventConsumer
from cag.events.schemas import (
    MAX_BODY_BYTES,
    MAX_INT32,
    MAX_REASON,
    MAX_SCHEMA_VERSION,
    AclChangedV1,
    Envelope,
    LayoutChangedV1,
    ModelRevisedV1,
    ModuleExpiredV1,
    ModuleInvalidatedV1,
    ModulePublishedV1,
    Payload,
    RouteDecidedV1,
    SourceChangedV1,
    TokenizerRetiredV1,
)
from cag.identifiers import check_event_id

_HEX = "5d2f8e0c4b7a9e61c3d0f2a8b6e4c1d9a7f3b5e2c8d4a6f0b1e3c5d7a9f2b4e6"
_MODULE = {"module_id": "billing-0123456789abcdef", "tenant_id": "acme", "route": "billing", "version": 3,
           "state": "invalidated", "reason": "model: ModelRevised(…)", "chain_hash": _HEX,
           "trigger_event_id": "2f7b8e4d-6c1a-4b3e-9d5f-0a8c7e6b4d21"}  # fmt: skip
# One valid `data` per schema (docs/events.md's examples); a new schema needs one here.
SAMPLES: dict[type[Payload], dict[str, Any]] = {
    SourceChangedV1: {"tenant_id": "acme", "source_uri": "git+https://kb.example.com/acme/billing", "checksum": _HEX},
    ModelRevisedV1: {"model_name": "smollm2-135m-instruct", "model_revision": "12fd25f77366fa6b3b4b768ec3050bf6"},
    TokenizerRetiredV1: {"tokenizer_revision": "68b2895867ee4a1f0c3d5e7b9a2c4e6f8a0b1c3d"},
    AclChangedV1: {"tenant_id": "acme", "scope": "workspace", "principal": "finance"},
    LayoutChangedV1: {"layout_id": "support_agent.v1", "layout_hash": _HEX},
    ModulePublishedV1: _MODULE | {"state": "published", "reason": "", "trigger_event_id": ""},
    ModuleInvalidatedV1: _MODULE,
    ModuleExpiredV1: _MODULE | {"state": "expired"},
    RouteDecidedV1: {"request_id": "req-7f3c9a", "tenant_id": "acme", "route": "billing", "path": "module",
                     "module_ids": ["shared-0011223344556677", "billing-fedcba9876543210"], "module_version": 4,
                     "rule": "intent=billing", "confidence": 1.0, "reason": ""},
}  # fmt: skip

# Longer than any string column or limit of the contract.
OVERLONG = MAX_REASON + 1


@dataclass(frozen=True)
class Case:
    """One message: the subject it arrives on and its body. `valid` is known by construction (None: not)."""

    subject: str
    body: bytes
    why: str
    valid: bool | None

    def __repr__(self) -> str:  # what hypothesis prints for a failing example: short
        shown = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return f"Case({self.why}, on {self.subject}, valid={self.valid}, {len(self.body):,} bytes: {shown!r})"


def _body(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, ensure_ascii=False).encode("utf-8", "surrogatepass")


def event_ids() -> st.SearchStrategy[str]:
    """Ids a producer may choose: UUIDs, and anything the id rule allows (up to 256 characters)."""
    rule = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,255}\Z")
    return st.one_of(st.uuids().map(str), rule)


def _instants() -> st.SearchStrategy[str]:
    return st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)).map(
        lambda t: t.isoformat()
    )


@st.composite
def _valid_envelope(draw: st.DrawFn, consumer: EventConsumer[Any]) -> tuple[type[Payload], dict[str, Any]]:
    schema = draw(st.sampled_from(consumer.accepts))
    envelope = {"event_id": draw(event_ids()), "subject": schema.subject, "version": schema.schema_version,
                "occurred_at": draw(_instants()), "data": dict(SAMPLES[schema])}  # fmt: skip
    return schema, envelope


def valid_cases(consumer: EventConsumer[Any]) -> st.SearchStrategy[Case]:
    return _valid_envelope(consumer).map(lambda se: Case(se[0].subject, _body(se[1]), "valid", True))


def _string_fields(schema: type[Payload]) -> list[str]:
    return [name for name, value in SAMPLES[schema].items() if isinstance(value, str)]


def _required_fields(schema: type[BaseModel]) -> list[str]:
    return [name for name, f in schema.model_fields.items() if f.is_required()]


_CONTROL = st.sampled_from(["\x00", "\x01", "\x1b", "\r", "\x7f"])
# Values no field of any schema accepts: a huge integer (beyond int32 and above every bound), a
# nested object, a list of numbers.
_WRONG_TYPE = st.one_of(
    st.integers(min_value=MAX_INT32 + 1).map(lambda n: n * 2**33), st.just({"a": 1}), st.just([1, 2.5])
)


@st.composite
def _hostile(draw: st.DrawFn, consumer: EventConsumer[Any]) -> Case:
    schema, env = draw(_valid_envelope(consumer))
    subject = schema.subject
    data: dict[str, Any] = env["data"]
    kind = draw(st.sampled_from(list(_MUTATIONS)))
    why = _MUTATIONS[kind](draw, consumer, schema, env, data)
    if kind == "bytes":
        return Case(subject, why.encode("latin-1"), "not UTF-8 / not JSON", False)
    if kind == "truncated":
        body = _body(env)
        return Case(subject, body[: draw(st.integers(0, len(body) - 1))], "truncated JSON", False)
    if kind == "oversized":
        body = _body(env)
        return Case(subject, body[:-1] + b" " * (MAX_BODY_BYTES - len(body) + 2) + b"}", why, False)
    if kind == "misrouted":  # arrives on its own subject, claims another
        return Case(subject, _body(env), why, False)
    if kind == "unknown subject":
        subject = env["subject"]
    return Case(subject, _body(env), why, False)


def _m_bytes(draw: st.DrawFn, *_: Any) -> str:
    # Latin-1 text whose bytes include 0x80-0xFF: never valid UTF-8 JSON.
    return "{" + draw(st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0xFF), min_size=1))


def _m_nothing(*_: Any) -> str:
    return ""


def _m_oversized(*_: Any) -> str:
    return f"body over {MAX_BODY_BYTES:,} bytes"


def _m_version(draw: st.DrawFn, c: Any, schema: type[Payload], env: dict[str, Any], data: Any) -> str:
    env["version"] = draw(
        st.one_of(st.integers(max_value=0), st.integers(min_value=schema.schema_version + 1), st.just(2**64))
    )
    return f"version {env['version']}"


def _m_unknown_subject(draw: st.DrawFn, consumer: EventConsumer[Any], s: Any, env: dict[str, Any], data: Any) -> str:
    # Under the consumer's filter when it has a wildcard (it arrives); otherwise one it does not handle.
    wildcard = consumer.subject.endswith(("*", ">"))
    prefix = consumer.subject.rstrip("*>").rstrip(".") if wildcard else "cag.unknown"
    env["subject"] = f"{prefix}.{draw(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12))}x"
    return f"unknown subject {env['subject']}"


def _m_misrouted(draw: st.DrawFn, consumer: EventConsumer[Any], schema: Any, env: dict[str, Any], data: Any) -> str:
    env["subject"] = draw(st.sampled_from([s.subject for s in SAMPLES if s.subject != schema.subject]))
    return f"envelope says {env['subject']}"


def _m_event_id(draw: st.DrawFn, c: Any, s: Any, env: dict[str, Any], data: Any) -> str:
    env["event_id"] = draw(
        st.one_of(
            st.just(""),
            st.just("e" * 257),
            st.text(min_size=257, max_size=2000),
            event_ids().flatmap(lambda i: st.sampled_from([i + " ", i + "é", i + "\x00", "-" + i])),
        )
    )
    return "bad event id"


def _m_control(draw: st.DrawFn, c: Any, schema: type[Payload], env: dict[str, Any], data: dict[str, Any]) -> str:
    field = draw(st.sampled_from(_string_fields(schema)))
    value, bad = data[field], draw(_CONTROL)
    at = draw(st.integers(0, len(value)))
    data[field] = value[:at] + bad + value[at:]
    return f"{field} with U+{ord(bad):04X}"


def _m_overlong(draw: st.DrawFn, c: Any, schema: type[Payload], env: dict[str, Any], data: dict[str, Any]) -> str:
    field = draw(st.sampled_from(_string_fields(schema)))
    data[field] = draw(st.sampled_from(["a", "é", "0"])) * draw(st.integers(OVERLONG, 4 * OVERLONG))
    return f"{field} of {len(data[field]):,} characters"


def _m_wrong_type(draw: st.DrawFn, c: Any, schema: type[Payload], env: dict[str, Any], data: dict[str, Any]) -> str:
    field = draw(st.sampled_from(sorted(data)))
    data[field] = draw(_WRONG_TYPE)
    return f"{field} = {data[field]!r:.40}"


def _m_extra(draw: st.DrawFn, c: Any, s: Any, env: dict[str, Any], data: dict[str, Any]) -> str:
    where = draw(st.sampled_from(["data", "envelope"]))
    name = draw(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10).map(lambda n: f"x_{n}"))
    (data if where == "data" else env)[name] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5)))
    return f"unknown {where} field {name}"


def _m_missing(draw: st.DrawFn, c: Any, schema: type[Payload], env: dict[str, Any], data: dict[str, Any]) -> str:
    required = _required_fields(schema)
    if draw(st.booleans()) or not required:
        field = draw(st.sampled_from(["event_id", "subject", "version", "data"]))
        del env[field]
        return f"no envelope {field}"
    field = draw(st.sampled_from(required))
    del data[field]
    return f"no {field}"


def _m_naive_time(draw: st.DrawFn, c: Any, s: Any, env: dict[str, Any], data: Any) -> str:
    env["occurred_at"] = draw(st.sampled_from(["2026-03-02T09:30:00", "yesterday", "", "9999-99-99T00:00:00Z"]))
    return f"occurred_at {env['occurred_at']!r}"


# Field-level mutations first: hypothesis leans towards the first choices, and they are the subtle ones.
_MUTATIONS: dict[str, Any] = {
    "control": _m_control,
    "overlong": _m_overlong,
    "wrong type": _m_wrong_type,
    "event id": _m_event_id,
    "misrouted": _m_misrouted,
    "version": _m_version,
    "unknown subject": _m_unknown_subject,
    "extra": _m_extra,
    "missing": _m_missing,
    "naive time": _m_naive_time,
    "oversized": _m_oversized,
    "truncated": _m_nothing,
    "bytes": _m_bytes,
}


def hostile_cases(consumer: EventConsumer[Any]) -> st.SearchStrategy[Case]:
    return _hostile(consumer)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def _random_fields(draw: st.DrawFn, consumer: EventConsumer[Any]) -> Case:
    """A valid envelope whose fields are replaced by arbitrary JSON: validity is for the consumer to decide."""
    schema, env = draw(_valid_envelope(consumer))
    data = env["data"]
    for field in draw(st.lists(st.sampled_from(sorted(data)), min_size=1, max_size=3, unique=True)):
        data[field] = draw(st.one_of(_JSON, st.text(), st.text(alphabet=st.characters(codec="utf-8"))))
    if draw(st.booleans()):
        env["event_id"] = draw(st.one_of(st.text(max_size=300), event_ids()))
    return Case(schema.subject, _body(env), "random fields", None)


def any_cases(consumer: EventConsumer[Any]) -> st.SearchStrategy[Case]:
    subjects = st.sampled_from([s.subject for s in consumer.accepts])
    raw = st.builds(lambda s, b: Case(s, b, "random bytes", None), subjects, st.binary(max_size=512))
    json_bodies = st.builds(lambda s, v: Case(s, json.dumps(v).encode(), "random JSON", None), subjects, _JSON)
    return st.one_of(valid_cases(consumer), hostile_cases(consumer), _random_fields(consumer), raw, json_bodies)


def check_accepted(envelope: Envelope, payload: Payload, *, subject: str) -> None:
    """What anything a consumer accepts satisfies: it fits every column and carries no NUL or controls."""
    check_event_id(envelope.event_id)
    assert envelope.subject == subject
    assert 1 <= envelope.version <= MAX_SCHEMA_VERSION
    assert envelope.occurred_at.utcoffset() is not None
    for value in _leaves(payload.model_dump(mode="json")):
        if isinstance(value, str):
            assert len(value) <= MAX_REASON, f"{len(value)} characters accepted"
            assert not any(ord(c) < 0x20 and c not in "\t\n" for c in value), f"control character in {value!r:.80}"
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        elif isinstance(value, int) and not isinstance(value, bool):
            assert -MAX_INT32 <= value <= MAX_INT32, f"{value} does not fit an integer column"


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def arrives(consumer: EventConsumer[Any], subject: str) -> bool:
    """Whether JetStream delivers a message on `subject` to the consumer (its filter, `*` and `>` wildcards)."""
    want, got = consumer.subject.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(got) == len(want)


def replay_of(envelope: Envelope, payload: Payload) -> bytes:
    """A replay under the same event id with another payload and time: a consumer must ignore it."""
    later = envelope.occurred_at + timedelta(minutes=5)
    return _body({"event_id": envelope.event_id, "subject": envelope.subject, "version": envelope.version,
                  "occurred_at": later.isoformat(), "data": payload.model_dump(mode="json")})  # fmt: skip


def new_msg_id() -> str:
    """A fresh `Nats-Msg-Id`, so that JetStream's dedup does not hide a replay from the consumer."""
    return uuid.uuid4().hex


EXAMPLES_ENV = "CAG_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    """Bounded by default; `CAG_FUZZ_EXAMPLES=n` runs n examples per property instead (the long run)."""
    return int(os.environ.get(EXAMPLES_ENV, default))


def fuzz_settings(default_examples: int) -> settings:
    return settings(
        max_examples=examples(default_examples),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
        print_blob=True,
    )
