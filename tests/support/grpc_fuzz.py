"""Property-based fuzzing of any gRPC service, driven by its proto descriptors (hypothesis).

The pieces, each usable alone:

- `StrategyBuilder` turns message descriptors into hypothesis strategies, recursively: strings (empty,
  NUL bytes, column-boundary and huge lengths up to ~1 MB, non-ASCII and Unicode edge cases; lone
  surrogates cannot be sent, protobuf strings are UTF-8), integers at their type's extremes (2^62,
  2^63-1, negatives), unknown numbers of open enums, bools, floats (NaN, infinities), nested messages
  set or missing, repeated fields of 0..n items (and some long ones), maps, oneofs with each branch or
  none, `google.protobuf.Timestamp`/`Duration` in and out of range. Values seen in *seed* requests are
  offered as "plausible" values (as they are and lightly bent) and seeds are mutated a few fields at a
  time, so the fuzzer gets past a service's first validation and reaches its storage.
- `fuzz_cases(service, seeds)` gives one strategy of `FuzzCase` per method of a service descriptor.
- `GrpcFuzzer` calls a method on a channel by descriptor (unary: awaited; server-streaming: at most a
  few messages read within a short window, then cancelled) and returns an `Outcome` (status code,
  details, the `google.rpc.ErrorInfo` of its status details, what the server logged at ERROR meanwhile). Optional call metadata
  (for example `("authorization", "Bearer …")`) goes with every call.
- `Invariants` checks an outcome: never INTERNAL/UNKNOWN (nor UNAVAILABLE, nor a hang past the
  deadline), status details bounded (a 1 MB id must not be echoed back), errors carry an ErrorInfo,
  INVALID_ARGUMENT names the field. Each broken rule raises its own `FuzzFailure` subclass, so
  hypothesis reports each kind of bug separately.
- `table_snapshot(engine, metadata)` fingerprints every table (row count, max primary key, digest of
  the content); `FuzzSession` takes one before each call and, when the call failed, one after: a call
  that fails must write nothing. After every call the health service must still answer SERVING.
- `authorization_values()` / `json_values()`: header values and JSON claims for fuzzing credentials
  (a `FuzzCase` may carry its own metadata instead of the fuzzer's).

A service's test (tests/integration/registry/test_registry_fuzz.py is the first) builds its server, its seeds
(method name → valid requests) and its snapshot function, then::

    CASES = fuzz_cases(SERVICE, SEEDS)          # SERVICE = x_pb2.DESCRIPTOR.services_by_name["X"]

    @pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
    @fuzz_settings()                            # bounded; CAG_FUZZ_EXAMPLES=n for a longer run
    @given(data=st.data())
    async def test_rpc(session: FuzzSession, method: str, data: st.DataObject) -> None:
        await session.exercise(data.draw(CASES[method], label=method))

with the `session` fixture returning
`FuzzSession(GrpcFuzzer(SERVICE, channel, metadata=credentials), snapshot=..., health_service=NAME)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

import grpc
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    OneofDescriptor,
    ServiceDescriptor,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cag.rpc.errors import ErrorDetails, decode_error_details

__all__ = [
    "DEFAULT_EXAMPLES",
    "DetailsTooLong",
    "ForbiddenStatus",
    "FuzzCase",
    "FuzzFailure",
    "FuzzProfile",
    "FuzzSession",
    "GrpcFuzzer",
    "InvalidArgumentWithoutField",
    "Invariants",
    "MissingErrorInfo",
    "Outcome",
    "StoppedServing",
    "StrategyBuilder",
    "TableState",
    "WroteOnError",
    "authorization_values",
    "fuzz_cases",
    "fuzz_settings",
    "json_values",
    "summarize",
    "table_snapshot",
]

Code = grpc.StatusCode
Metadata = Sequence[tuple[str, str | bytes]]
Snapshot = Callable[[], Awaitable[Mapping[str, Any]]]

DEFAULT_EXAMPLES = 50
GRPC_RECEIVE_LIMIT = 4 * 1024 * 1024  # gRPC's default limit on a received message
GRPC_METADATA_SOFT_LIMIT = 8 * 1024  # above it, gRPC may refuse received metadata (RESOURCE_EXHAUSTED)
EXAMPLES_ENV = "CAG_FUZZ_EXAMPLES"

# --- values ---

_T = FieldDescriptor
INT_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_T.TYPE_UINT64, _T.TYPE_FIXED64), (0, 2**64 - 1)),
}
INTERESTING_INTS = (
    0, 1, -1, 2, 3, 7, 100, 2**7, 2**8, 2**15, 2**16, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32,
    2**53 + 1, 2**62, 2**63 - 1, -(2**63), 2**64 - 1,
)  # fmt: skip
# Strings that break parsers, databases, logs and path handling. (No lone surrogates: protobuf strings are
# UTF-8 and the client refuses to serialize them.)
EDGE_STRINGS = (
    "", " ", "\x00", "a\x00b", "\x00" * 3, "\t", "\n", "\r\n", "line\nforged: log", "\x1b[31mred", "\x7f", "\x01\x02",
    "é", "Ω", "日本語", "😀", "\U0010ffff", "\ufeff", "\ufffd", "\u202eevil", "\u200b", "ﬃ", "İ", "ß", "\u0301",
    "e\u0301", "Ａ", "A", "UPPER", "-lead", ".", "..", "a b", "a/b", "a:b", "a@b", "a\\b", "0", "-1", "1e309", "NaN",
    "null", "true", "{}", "[]", '{"a":1}', "[1]", '{"a":', "%s%s%n", "{0}", "' OR '1'='1", "--", "%", "_", "*",
    "../../etc/passwd", "/etc/passwd", "/etc/shadow", "file:///etc/passwd", "file:///dev/zero", "/dev/zero",
    "/proc/self/environ", "/tmp", "file://", "s3://", "http://127.0.0.1:1/", "\\\\server\\share",
)  # fmt: skip
REPEATED_CHARS = ("a", "0", "-", "é", "日", "😀", "\x00", " ", "/", "A")
BOUNDARY_LENGTHS = (16, 31, 32, 33, 63, 64, 65, 96, 97, 127, 128, 129, 199, 200, 201, 255, 256, 257, 1024, 1025, 2049)
HUGE_LENGTHS = (4_097, 65_537, 262_145, 1_000_000)
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 1e38, 3.5e38, 1e308, float("inf"), float("-inf"), float("nan"))

# Timestamp bounds: 0001-01-01 .. 9999-12-31T23:59:59 is the valid range of google.protobuf.Timestamp.
TIMESTAMP_SECONDS = (
    0, 1, -1, 1_767_225_600, 1_798_761_600, 4_102_444_800, 253_402_300_799, 253_402_300_800, -62_135_596_800,
    -62_135_596_801, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63),
)  # fmt: skip
NANOS = (0, 1, 500_000_000, 999_999_999, 1_000_000_000, -1, -999_999_999, 2**31 - 1, -(2**31))
DURATION_SECONDS = (0, 1, -1, 60, 315_576_000_000, 315_576_000_001, -315_576_000_001, 2**63 - 1, -(2**63))


def timestamps() -> st.SearchStrategy[Timestamp]:
    """Ordinary instants (1970-2100, nanos in range) and out-of-range seconds / nanos."""
    ordinary = st.builds(Timestamp, seconds=st.integers(0, 4_102_444_800), nanos=st.integers(0, 999_999_999))
    odd = st.builds(
        Timestamp,
        seconds=st.one_of(st.sampled_from(TIMESTAMP_SECONDS), st.integers(-(2**63), 2**63 - 1)),
        nanos=st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1)),
    )
    return st.one_of(ordinary, odd)


def durations() -> st.SearchStrategy[Duration]:
    ordinary = st.builds(Duration, seconds=st.integers(0, 86_400), nanos=st.integers(0, 999_999_999))
    odd = st.builds(
        Duration,
        seconds=st.one_of(st.sampled_from(DURATION_SECONDS), st.integers(-(2**63), 2**63 - 1)),
        nanos=st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1)),
    )
    return st.one_of(ordinary, odd)


# Well-known message types with their own value strategies (full name → strategy factory).
SPECIAL_MESSAGES: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    Timestamp.DESCRIPTOR.full_name: timestamps,
    Duration.DESCRIPTOR.full_name: durations,
}


def _variants(value: str) -> list[str]:
    """A plausible string bent slightly: one step past what a validator or a column may allow."""
    return [
        value, value + "\x00", "\x00" + value, value.upper(), " " + value, value + " ", value + "\n", value + "é",
        value + "/../x", value * 2, value + "x" * 200, value + "-" * 2_100, value[:-1], value[1:], value + "\u202e",
        value.replace("-", "_").replace(".", "/"),
    ]  # fmt: skip


def _int_variants(value: int, low: int, high: int) -> list[int]:
    return [v for v in (value, value - 1, value + 1, -value, value * 2**16, value + 2**31) if low <= v <= high]


@dataclass(frozen=True)
class FuzzProfile:
    """How far the strategies go. The defaults fit a service behind gRPC's 4 MiB request limit."""

    max_depth: int = 4  # nesting of messages below the request
    max_items: int = 4  # repeated fields and maps: 0..max_items entries, and sometimes `long_lengths`
    long_lengths: tuple[int, ...] = (33, 257)
    boundary_lengths: tuple[int, ...] = BOUNDARY_LENGTHS
    huge_lengths: tuple[int, ...] = HUGE_LENGTHS
    # Requests larger than this are not generated: gRPC refuses them (RESOURCE_EXHAUSTED) before the service
    # sees them. None: no bound.
    max_request_bytes: int | None = GRPC_RECEIVE_LIMIT - 1024
    max_mutations: int = 3  # fields changed in one mutated seed
    special: Mapping[str, Callable[[], st.SearchStrategy[Any]]] = field(
        default_factory=lambda: dict(SPECIAL_MESSAGES), hash=False, compare=False
    )


# --- messages ---


def _synthetic(oneof: OneofDescriptor) -> bool:
    """proto3 `optional` fields live in a one-field oneof named after them: treat them as plain fields."""
    fields = list(oneof.fields)
    return len(fields) == 1 and oneof.name == "_" + fields[0].name


def _message_type(f: FieldDescriptor) -> Descriptor:
    assert f.message_type is not None, f.full_name
    return f.message_type


def _descriptor(message: Message) -> Descriptor:
    return cast("Descriptor", message.DESCRIPTOR)  # the stubs type it as the C (upb) or the Python class


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    return {f.name: f for f in descriptor.fields}


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == _T.TYPE_MESSAGE and bool(_message_type(f).GetOptions().map_entry)


def _assign(message: Message, f: FieldDescriptor, value: Any) -> None:
    """Set one field (singular value, list for repeated, dict for maps) on `message`."""
    if _is_map(f):
        container = getattr(message, f.name)
        message_values = _fields(_message_type(f))["value"].type == _T.TYPE_MESSAGE
        for key, item in value.items():
            if message_values:
                container[key].CopyFrom(item)
            else:
                container[key] = item
    elif f.is_repeated:
        getattr(message, f.name).extend(value)
    elif f.type == _T.TYPE_MESSAGE:
        getattr(message, f.name).CopyFrom(value)
    else:
        setattr(message, f.name, value)


def _pool_key(f: FieldDescriptor) -> tuple[str, int, str]:
    type_name = f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""
    return f.name, f.type, type_name


def _collect(message: Message, pool: dict[tuple[str, int, str], list[Any]]) -> None:
    for f, value in message.ListFields():
        if _is_map(f):
            continue
        items = list(value) if f.is_repeated else [value]
        bucket = pool.setdefault(_pool_key(f), [])
        for item in items:
            if f.type == _T.TYPE_MESSAGE:
                copy = type(item)()
                copy.CopyFrom(item)
                item = copy
                _collect(item, pool)
            if item not in bucket:
                bucket.append(item)


def _copy(message: Message) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


class StrategyBuilder:
    """Hypothesis strategies for messages, from their descriptors, with plausible values taken from `seeds`."""

    def __init__(self, seeds: Iterable[Message] = (), profile: FuzzProfile | None = None) -> None:
        self.profile = profile or FuzzProfile()
        self.seeds = [_copy(s) for s in seeds]
        self.pool: dict[tuple[str, int, str], list[Any]] = {}
        for seed in self.seeds:
            _collect(seed, self.pool)
        self._messages: dict[tuple[str, int], st.SearchStrategy[Message]] = {}
        self._derived: dict[FuzzProfile, StrategyBuilder] = {}

    def derived(self, **changes: Any) -> StrategyBuilder:
        """The same seeds under a changed profile (cached)."""
        profile = replace(self.profile, **changes)
        if profile == self.profile:
            return self
        if profile not in self._derived:
            builder = StrategyBuilder(profile=profile)
            builder.seeds, builder.pool = self.seeds, self.pool
            self._derived[profile] = builder
        return self._derived[profile]

    # scalars

    def strings(self) -> st.SearchStrategy[str]:
        p = self.profile
        parts: list[st.SearchStrategy[str]] = [
            st.sampled_from(EDGE_STRINGS),
            st.text(st.characters(codec="utf-8"), max_size=24),
            st.text(st.characters(codec="ascii"), max_size=12),
            st.builds(lambda a, b: a + "\x00" + b, st.text(max_size=8, alphabet="abc-_."), st.text(max_size=8)),
            st.builds(str.__mul__, st.sampled_from(REPEATED_CHARS), st.sampled_from(p.boundary_lengths)),
        ]
        if p.huge_lengths:
            parts.append(st.builds(str.__mul__, st.sampled_from(REPEATED_CHARS), st.sampled_from(p.huge_lengths)))
        return st.one_of(parts)

    def binaries(self) -> st.SearchStrategy[bytes]:
        lengths = (*self.profile.boundary_lengths, *self.profile.huge_lengths)
        return st.one_of(
            st.binary(max_size=32),
            st.builds(bytes.__mul__, st.sampled_from([b"\x00", b"\xff", b"a"]), st.sampled_from(lengths)),
        )

    @staticmethod
    def integers(low: int, high: int) -> st.SearchStrategy[int]:
        extremes = sorted({v for v in (low, high, *INTERESTING_INTS) if low <= v <= high})
        return st.one_of(st.sampled_from(extremes), st.integers(max(low, -3), min(high, 1_000)), st.integers(low, high))

    @staticmethod
    def enums(enum: EnumDescriptor) -> st.SearchStrategy[int]:
        known = [v.number for v in enum.values]
        if enum.is_closed:  # proto2 enums: unknown numbers cannot be set
            return st.sampled_from(known)
        unknown = sorted({max(known) + 1, -1, 2**31 - 1, -(2**31), 1_000})
        return st.one_of(st.sampled_from(known), st.sampled_from(unknown), st.integers(-(2**31), 2**31 - 1))

    def _base(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """Values of one element of `f`, from its type alone."""
        t = f.type
        if t == _T.TYPE_STRING:
            return self.strings()
        if t == _T.TYPE_BYTES:
            return self.binaries()
        if t == _T.TYPE_BOOL:
            return st.booleans()
        if t in INT_RANGES:
            return self.integers(*INT_RANGES[t])
        if t == _T.TYPE_FLOAT:
            return st.one_of(st.sampled_from(INTERESTING_FLOATS[:-4]), st.floats(width=32))
        if t == _T.TYPE_DOUBLE:
            return st.one_of(st.sampled_from(INTERESTING_FLOATS), st.floats())
        if t == _T.TYPE_ENUM:
            assert f.enum_type is not None
            return self.enums(f.enum_type)
        if t in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
            return self.message(_message_type(f), depth)
        raise NotImplementedError(f"field {f.full_name}: type {t}")

    def element(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """One element of `f`: its type's fuzz values, or a plausible value seen in the seeds (maybe bent)."""
        base = self._base(f, depth)
        pool = self.pool.get(_pool_key(f))
        if not pool:
            return base
        plausible: st.SearchStrategy[Any] = st.sampled_from(pool)
        if f.type == _T.TYPE_STRING:
            plausible = st.one_of(plausible, st.sampled_from(pool).flatmap(lambda v: st.sampled_from(_variants(v))))
        elif f.type in INT_RANGES:
            low, high = INT_RANGES[f.type]
            plausible = st.sampled_from(pool).flatmap(lambda v: st.sampled_from(_int_variants(v, low, high)))
        elif f.type == _T.TYPE_MESSAGE:
            plausible = st.sampled_from(pool).map(_copy)
        return st.one_of(plausible, base)

    def field(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """A whole value of `f`: a dict for maps, a list for repeated fields, else one element."""
        if _is_map(f):
            entry = _fields(_message_type(f))
            light = self.derived(huge_lengths=(), long_lengths=())
            return st.dictionaries(
                light._base(entry["key"], depth),
                light.element(entry["value"], depth),
                max_size=self.profile.max_items,
            )
        if f.is_repeated:
            short = st.lists(self.element(f, depth), max_size=self.profile.max_items)
            if not self.profile.long_lengths:
                return short
            # Long lists repeat one light element (no huge strings: 257 of them would be 257 MB).
            light = self.derived(huge_lengths=(), long_lengths=())
            long = st.builds(
                lambda item, n: [item] * n, light.element(f, depth), st.sampled_from(self.profile.long_lengths)
            )
            return st.one_of(short, long)
        return self.element(f, depth)

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Random messages of `descriptor`: every field set or missing, each real oneof on one branch or none."""
        key = (descriptor.full_name, depth)
        if key in self._messages:
            return self._messages[key]
        special = self.profile.special.get(descriptor.full_name)
        cls = GetMessageClass(descriptor)
        strategy: st.SearchStrategy[Message]
        if special is not None:
            strategy = special()
        elif depth >= self.profile.max_depth:
            strategy = st.builds(cls)
        else:
            regular: dict[str, st.SearchStrategy[Any]] = {}
            for f in descriptor.fields:
                if f.containing_oneof is None or _synthetic(f.containing_oneof):
                    regular[f.name] = st.deferred(lambda f=f: self.field(f, depth + 1))  # type: ignore[misc]
            oneofs = [
                st.one_of(
                    st.none(),
                    *(
                        st.tuples(st.just(f.name), st.deferred(lambda f=f: self.element(f, depth + 1)))  # type: ignore[misc]
                        for f in oneof.fields
                    ),
                )
                for oneof in descriptor.oneofs
                if not _synthetic(oneof)
            ]
            strategy = st.builds(
                _assemble, st.just(cls), st.fixed_dictionaries({}, optional=regular), st.tuples(*oneofs)
            )
        self._messages[key] = strategy
        return strategy

    # seeds

    def mutations(self, seed: Message) -> st.SearchStrategy[Message]:
        """`seed` with 1..max_mutations fields (at any depth) replaced by fuzz values or cleared."""

        @st.composite
        def mutate(draw: st.DrawFn) -> Message:
            message = _copy(seed)
            for _ in range(draw(st.integers(1, self.profile.max_mutations))):
                self._mutate_once(draw, message, 0)
            return message

        return mutate()

    def _mutate_once(self, draw: st.DrawFn, message: Message, depth: int) -> None:
        fields = list(_descriptor(message).fields)
        if not fields:
            return
        f = draw(st.sampled_from(fields))
        nested = (
            f.type == _T.TYPE_MESSAGE
            and not _is_map(f)
            and _message_type(f).full_name not in self.profile.special
            and depth < self.profile.max_depth
        )
        if nested:
            if f.is_repeated:
                items = getattr(message, f.name)
                if len(items) and draw(st.integers(0, 3)) > 0:
                    self._mutate_once(draw, items[draw(st.integers(0, len(items) - 1))], depth + 1)
                    return
            elif message.HasField(f.name) and draw(st.integers(0, 4)) > 0:
                self._mutate_once(draw, getattr(message, f.name), depth + 1)
                return
        if draw(st.integers(0, 7)) == 0:
            message.ClearField(f.name)
            return
        value = draw(self.field(f, depth + 1))
        message.ClearField(f.name)
        _assign(message, f, value)

    def requests(self, descriptor: Descriptor, seeds: Sequence[Message] = ()) -> st.SearchStrategy[Message]:
        """Requests of one method: mostly mutated seeds (they pass the first checks), also wholly random ones."""
        random = self.message(descriptor)
        strategy = random
        if seeds:
            mutated = st.sampled_from([_copy(s) for s in seeds]).flatmap(self.mutations)
            strategy = st.one_of(mutated, mutated, random)
        limit = self.profile.max_request_bytes
        return strategy if limit is None else strategy.filter(lambda m: m.ByteSize() <= limit)


def _assemble(cls: type[Message], values: Mapping[str, Any], oneofs: Iterable[tuple[str, Any] | None]) -> Message:
    message = cls()
    fields = _fields(_descriptor(message))
    for name, value in values.items():
        _assign(message, fields[name], value)
    for choice in oneofs:
        if choice is not None:
            _assign(message, fields[choice[0]], choice[1])
    return message


# --- credentials and JSON ---

# What an ASCII metadata value may hold: the client itself refuses anything else (a tab, say) before sending.
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_B64URL = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=48)
ODD_AUTHORIZATION = (
    "", "Bearer", "Bearer ", "bearer  x", "BEARER x", "Basic dXNlcjpwYXNz", "Bearer null", "Bearer undefined",
    "Bearer .", "Bearer ..", "Bearer a.b", "Bearer a.b.c.d", "Bearer eyJhbGciOiJub25lIn0.e30.",
    "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.", "Bearer eyJ9.eyJ9.eyJ9", "Token x",
)  # fmt: skip


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value: what a decoder hands to code that expected one particular shape."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(INTERESTING_INTS),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(EDGE_STRINGS),
        st.text(max_size=16),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def authorization_values(tokens: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    """Values of an `authorization` header: malformed schemes, JWT-shaped junk, oversized ones, and
    "Bearer <t>" for every t of `tokens` (for example tokens signed with the right key but fuzzed claims),
    as they are and bent (truncated, a character changed, doubled)."""
    jwt_shaped = st.builds(lambda a, b, c: f"{a}.{b}.{c}", _B64URL, _B64URL, _B64URL)
    parts: list[st.SearchStrategy[str]] = [
        st.sampled_from(ODD_AUTHORIZATION),
        st.text(_PRINTABLE, max_size=64),
        st.builds("Bearer {}".format, st.text(_PRINTABLE, max_size=64)),
        st.builds("Bearer {}".format, jwt_shaped),
        st.builds(lambda n: "Bearer " + "a" * n, st.sampled_from([4_096, 4_097, 7_000])),
    ]
    if tokens is not None:
        bent = st.sampled_from([
            lambda t: t, lambda t: t[:-1], lambda t: t[:-1] + ("A" if t[-1:] != "A" else "B"), lambda t: t + t,
            lambda t: t + ".", lambda t: ".".join(t.split(".")[:2]) + ".", lambda t: t.upper(),
        ])  # fmt: skip
        parts.append(st.builds(lambda t, f: "Bearer " + f(t), tokens, bent))
    return st.one_of(parts)


# --- cases ---


def _short(value: Any) -> str:
    if isinstance(value, str | bytes) and len(value) > 64:
        if len(set(value)) == 1:
            return f"{value[:1]!r} * {len(value):,}"
        return f"{value[:48]!r}… ({len(value):,} long)"
    return repr(value)


def summarize(message: Message) -> str:
    """A compact one-line rendering of a message: long strings shortened, runs of one character as `'a' * n`."""
    parts = []
    for f, value in message.ListFields():
        if _is_map(f):
            rendered = "{" + ", ".join(f"{_short(k)}: {_render(v)}" for k, v in value.items()) + "}"
        elif f.is_repeated:
            items = list(value)
            shown = ", ".join(_render(v) for v in items[:4])
            rendered = f"[{shown}{', …' if len(items) > 4 else ''}]" + (
                f" ({len(items)} items)" if len(items) > 4 else ""
            )
        else:
            rendered = _render(value)
            if f.enum_type is not None:
                known = f.enum_type.values_by_number.get(value)
                rendered = known.name if known is not None else f"{value} (unknown {f.enum_type.name})"
        parts.append(f"{f.name}={rendered}")
    return f"{message.DESCRIPTOR.name}({', '.join(parts)})"


def _render(value: Any) -> str:
    return summarize(value) if isinstance(value, Message) else _short(value)


@dataclass(frozen=True)
class FuzzCase:
    """One request for one method; its repr (what hypothesis prints for a failing example) is compact."""

    method: str
    request: Message
    metadata: tuple[tuple[str, str], ...] | None = None  # None: the fuzzer's own (its credentials)

    def __repr__(self) -> str:
        extra = "" if self.metadata is None else f" with metadata {[(k, _short(v)) for k, v in self.metadata]}"
        return f"{self.method}: {summarize(self.request)}{extra}"


def fuzz_cases(
    service: ServiceDescriptor,
    seeds: Mapping[str, Sequence[Message]] | None = None,
    *,
    profile: FuzzProfile | None = None,
) -> dict[str, st.SearchStrategy[FuzzCase]]:
    """A strategy of `FuzzCase` for every method of `service`.

    seeds: method name → valid requests of it. All seeds together feed the plausible values of every
    method (a tenant id seen in a Register seed is offered to List's tenant_id too).
    """
    seeds = seeds or {}
    unknown = set(seeds) - {m.name for m in service.methods}
    if unknown:
        raise ValueError(f"seeds for methods {service.full_name} does not have: {sorted(unknown)}")
    builder = StrategyBuilder([s for group in seeds.values() for s in group], profile)
    return {
        m.name: builder.requests(m.input_type, seeds.get(m.name, ())).map(partial(FuzzCase, m.name))
        for m in service.methods
    }


def fuzz_settings(default_examples: int = DEFAULT_EXAMPLES, **overrides: Any) -> settings:
    """Bounded by default; `CAG_FUZZ_EXAMPLES=n` runs n examples per test instead (the long run)."""
    examples = int(os.environ.get(EXAMPLES_ENV, default_examples))
    options: dict[str, Any] = {
        "max_examples": examples,
        "deadline": None,
        "database": None,
        "derandomize": False,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
        "print_blob": True,
    }
    options.update(overrides)
    return settings(**options)


# --- calling ---


@dataclass(frozen=True)
class Outcome:
    """How one call ended."""

    method: str
    code: grpc.StatusCode
    details: str = ""
    error_info: ErrorDetails | None = None  # the google.rpc.ErrorInfo of grpc-status-details-bin
    responses: int = 0  # messages received
    still_open: bool = False  # a stream that was still running when the fuzzer cancelled it
    server_errors: tuple[str, ...] = ()  # what the server process logged at ERROR during the call
    metadata_bytes: int = 0  # size of the metadata sent, as HTTP/2 counts it (name + value + 32 per entry)

    @property
    def ok(self) -> bool:
        return self.code == Code.OK

    def describe(self) -> str:
        lines = [f"{self.method} -> {self.code.name}: {_short(self.details)}"]
        if self.error_info is not None:
            info = self.error_info
            lines.append(f"  ErrorInfo reason={info.reason!r} field={info.field!r} metadata={dict(info.metadata)}")
        lines += [f"  server log: {entry}" for entry in self.server_errors]
        return "\n".join(lines)


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.entries: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        entry = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry += f": {type(error).__module__}.{type(error).__qualname__}: {str(error)[:400]}"
            if error.__cause__ is not None:
                cause = error.__cause__
                entry += f" (caused by {type(cause).__qualname__}: {str(cause)[:200]})"
        self.entries.append(entry)


@contextmanager
def _server_errors() -> Iterator[list[str]]:
    """What is logged at ERROR meanwhile (an in-process server logs its unhandled exceptions there)."""
    handler = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.entries
    finally:
        root.removeHandler(handler)


async def _one(request: Message) -> AsyncIterator[Message]:
    yield request


class GrpcFuzzer:
    """Calls the methods of `service` on `channel` by descriptor and reports how each call ended."""

    def __init__(
        self,
        service: ServiceDescriptor,
        channel: grpc.aio.Channel,
        *,
        metadata: Metadata = (),
        timeout_s: float = 15.0,
        stream_window_s: float = 0.3,
        max_stream_messages: int = 3,
    ) -> None:
        """metadata: sent with every call (credentials, for example ("authorization", "Bearer …")).
        timeout_s: deadline of every call; a unary call that reaches it counts as a hang.
        stream_window_s / max_stream_messages: how long and how much of a server stream is read before the
        fuzzer cancels it (a stream still open then is a healthy one).
        """
        self.service = service
        self.channel = channel
        self.metadata = tuple(metadata)
        self.timeout_s = timeout_s
        self.stream_window_s = stream_window_s
        self.max_stream_messages = max_stream_messages
        self.methods = {m.name: m for m in service.methods}
        self._callables = {m.name: self._callable(m) for m in service.methods}

    def _callable(self, method: MethodDescriptor) -> Any:
        path = f"/{self.service.full_name}/{method.name}"
        factory = {
            (False, False): self.channel.unary_unary,
            (False, True): self.channel.unary_stream,
            (True, False): self.channel.stream_unary,
            (True, True): self.channel.stream_stream,
        }[(method.client_streaming, method.server_streaming)]
        output = GetMessageClass(method.output_type)
        return factory(path, request_serializer=_serialize, response_deserializer=output.FromString)

    async def call(self, method: str, request: Message, *, metadata: Metadata | None = None) -> Outcome:
        """metadata: instead of the fuzzer's own (to fuzz credentials, for example)."""
        sent = self.metadata if metadata is None else tuple(metadata)
        descriptor = self.methods[method]
        if request.DESCRIPTOR.full_name != descriptor.input_type.full_name:
            raise TypeError(f"{method} takes {descriptor.input_type.full_name}, not {request.DESCRIPTOR.full_name}")
        argument: Any = _one(request) if descriptor.client_streaming else request
        with _server_errors() as logged:
            try:
                if descriptor.server_streaming:
                    outcome = await self._read_stream(method, argument, sent)
                else:
                    await self._callables[method](argument, timeout=self.timeout_s, metadata=sent)
                    outcome = Outcome(method, Code.OK, responses=1)
            except grpc.aio.AioRpcError as e:
                outcome = self._failed(method, e.code(), e.details(), e.trailing_metadata())
        return replace(outcome, server_errors=tuple(logged), metadata_bytes=metadata_size(sent))

    async def _read_stream(self, method: str, argument: Any, metadata: Metadata) -> Outcome:
        call = self._callables[method](argument, timeout=self.timeout_s, metadata=metadata)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.stream_window_s
        received = 0
        try:
            while received < self.max_stream_messages and (remaining := end - loop.time()) > 0:
                try:
                    response = await asyncio.wait_for(call.read(), remaining)
                except TimeoutError:
                    break
                if response is _EOF:
                    code = await call.code()
                    if code == Code.OK:
                        return Outcome(method, code, responses=received)
                    return self._failed(method, code, await call.details(), await call.trailing_metadata())
                received += 1
        finally:
            call.cancel()
        return Outcome(method, Code.OK, responses=received, still_open=True)

    def _failed(self, method: str, code: grpc.StatusCode, details: str | None, trailing: Any) -> Outcome:
        return Outcome(method, code, details or "", decode_error_details(trailing))


_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lack it


def metadata_size(metadata: Metadata) -> int:
    return sum(len(key) + len(value) + 32 for key, value in metadata)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


# --- invariants ---


class FuzzFailure(AssertionError):  # noqa: N818  (named for what broke, as hypothesis prints it)
    """A broken invariant. Subclasses per kind, so hypothesis reports each kind of bug on its own."""


class ForbiddenStatus(FuzzFailure):
    pass


class DetailsTooLong(FuzzFailure):
    pass


class MissingErrorInfo(FuzzFailure):
    pass


class InvalidArgumentWithoutField(FuzzFailure):
    pass


class WroteOnError(FuzzFailure):
    pass


class StoppedServing(FuzzFailure):
    pass


# What a malformed request may never get: a bug (INTERNAL, UNKNOWN), a dead or overloaded server
# (UNAVAILABLE), or no answer at all (DEADLINE_EXCEEDED on a unary call: the server hung).
DEFAULT_FORBIDDEN = frozenset({Code.INTERNAL, Code.UNKNOWN, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})
# Statuses the service raises itself (its error interceptor attaches an ErrorInfo to them); gRPC's own
# statuses (RESOURCE_EXHAUSTED for a request over the size limit, CANCELLED) carry none.
APPLICATION_CODES = frozenset({
    Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION, Code.ABORTED,
    Code.OUT_OF_RANGE, Code.PERMISSION_DENIED, Code.UNAUTHENTICATED, Code.DATA_LOSS,
})  # fmt: skip


@dataclass(frozen=True)
class Invariants:
    forbidden: frozenset[grpc.StatusCode] = DEFAULT_FORBIDDEN
    max_details_bytes: int = 1024
    error_info_codes: frozenset[grpc.StatusCode] = APPLICATION_CODES  # must carry an ErrorInfo
    invalid_argument_names_field: bool = True  # INVALID_ARGUMENT's ErrorInfo.field is set
    # A request below these sizes (message, metadata) that gets RESOURCE_EXHAUSTED: the server's answer was
    # too large for gRPC's metadata limits (~16 KiB of status details echoing the request), which gRPC
    # reports that way. None: the service may answer RESOURCE_EXHAUSTED itself (quotas).
    request_limit_bytes: int | None = GRPC_RECEIVE_LIMIT
    metadata_limit_bytes: int = GRPC_METADATA_SOFT_LIMIT

    def check(self, case: FuzzCase, outcome: Outcome) -> None:
        where = f"{case!r}\n{outcome.describe()}"
        if outcome.code in self.forbidden:
            raise ForbiddenStatus(f"{outcome.code.name} for\n{where}")
        size = len(outcome.details.encode())
        if size > self.max_details_bytes:
            raise DetailsTooLong(f"status details are {size:,} bytes (at most {self.max_details_bytes:,}) for\n{where}")
        limit = self.request_limit_bytes
        if (
            outcome.code == Code.RESOURCE_EXHAUSTED
            and limit is not None
            and case.request.ByteSize() < limit
            and outcome.metadata_bytes < self.metadata_limit_bytes
        ):
            raise DetailsTooLong(
                f"RESOURCE_EXHAUSTED for a {case.request.ByteSize():,}-byte request (gRPC accepts {limit:,}): the"
                f" answer's status or trailing metadata outgrew gRPC's limits (does it echo the request?) for\n{where}"
            )
        if outcome.code in self.error_info_codes and outcome.error_info is None:
            raise MissingErrorInfo(f"{outcome.code.name} without an ErrorInfo for\n{where}")
        if (
            self.invalid_argument_names_field
            and outcome.code == Code.INVALID_ARGUMENT
            and outcome.error_info is not None
            and not outcome.error_info.field
        ):
            raise InvalidArgumentWithoutField(f"INVALID_ARGUMENT names no field for\n{where}")


# --- "nothing is written on an error" ---


@dataclass(frozen=True)
class TableState:
    rows: int
    max_key: str | None  # the largest primary key (as text)
    digest: str  # md5 over every row's text, in order: catches updates as well as inserts and deletes


def table_snapshot(
    engine: AsyncEngine, metadata: MetaData, *, exclude: Iterable[str] = ()
) -> Callable[[], Awaitable[dict[str, TableState]]]:
    """A function fingerprinting every table of `metadata` (Postgres) in one query."""
    preparer = engine.dialect.identifier_preparer
    skip = set(exclude)
    selects = []
    for table in metadata.sorted_tables:
        if table.name in skip:
            continue
        keys = [f"t.{preparer.quote(c.name)}" for c in table.primary_key.columns]
        if not keys:
            max_key = "NULL::text"
        elif len(keys) == 1:
            max_key = f"max({keys[0]})::text"
        else:
            max_key = f"max(ROW({', '.join(keys)})::text)"
        label = table.name.replace("'", "''")
        selects.append(
            f"SELECT '{label}' AS table_name, count(*) AS n_rows, {max_key} AS max_key,"
            f" md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) AS digest"
            f" FROM {preparer.format_table(table)} AS t"
        )
    if not selects:
        raise ValueError("no tables to snapshot")
    query = text(" UNION ALL ".join(selects))

    async def snapshot() -> dict[str, TableState]:
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {r.table_name: TableState(rows=r.n_rows, max_key=r.max_key, digest=r.digest) for r in rows}

    return snapshot


def snapshot_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    return [
        f"{name}: {before.get(name)} -> {after.get(name)}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


# --- a session: call, check, keep serving ---


class FuzzSession:
    """Runs fuzz cases against one server: snapshot, call, invariants, health; raises `FuzzFailure`."""

    def __init__(
        self,
        fuzzer: GrpcFuzzer,
        *,
        snapshot: Snapshot | None = None,
        invariants: Invariants | None = None,
        health_service: str | None = "",
    ) -> None:
        """snapshot: fingerprints the service's storage; compared around every call that fails.
        health_service: the name the gRPC health service must report SERVING after every call ("" = the
        server as a whole; None = no health check).
        """
        self.fuzzer = fuzzer
        self.snapshot = snapshot
        self.invariants = invariants or Invariants()
        self.health_service = health_service
        self._health = health_pb2_grpc.HealthStub(fuzzer.channel)
        self.outcomes: list[tuple[FuzzCase, Outcome]] = []  # every call made (for statistics and reports)

    async def exercise(self, case: FuzzCase) -> Outcome:
        before = await self.snapshot() if self.snapshot is not None else None
        outcome = await self.fuzzer.call(case.method, case.request, metadata=case.metadata)
        self.outcomes.append((case, outcome))
        await self.assert_serving(case)
        changed: list[str] = []
        if not outcome.ok and self.snapshot is not None:
            assert before is not None
            changed = snapshot_diff(before, await self.snapshot())
        try:
            self.invariants.check(case, outcome)
        except FuzzFailure as e:
            if changed:  # say so: a wrong status may hide a write as well
                raise type(e)(f"{e}\n  and it wrote: {'; '.join(changed)}") from None
            raise
        if changed:
            raise WroteOnError(
                f"the call failed but wrote to {', '.join(c.split(':')[0] for c in changed)}:\n"
                + "\n".join(changed)
                + f"\n{case!r}\n{outcome.describe()}"
            )
        return outcome

    async def assert_serving(self, case: FuzzCase | None = None) -> None:
        if self.health_service is None:
            return
        after = f" after {case!r}" if case is not None else ""
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=self.health_service), timeout=5.0, metadata=self.fuzzer.metadata
            )
        except grpc.aio.AioRpcError as e:
            raise StoppedServing(f"the health check failed ({e.code().name}: {e.details()}){after}") from None
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise StoppedServing(f"health status {response.status}{after}")

    def statistics(self) -> dict[str, dict[str, int]]:
        """method → status name → calls (to see how deep the fuzzer got)."""
        counts: dict[str, dict[str, int]] = {}
        for case, outcome in self.outcomes:
            per_method = counts.setdefault(case.method, {})
            name = "OPEN" if outcome.still_open else outcome.code.name
            per_method[name] = per_method.get(name, 0) + 1
        return counts
