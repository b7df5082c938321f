"""What an answer is: its text and token ids, the router's decision and the final record, as plain frozen
records (no protobuf types leak to product code); and the fold of a Generate stream into one.

Enumerations are lower-case names without their proto prefix ("module", "fallback"; "rule", "classifier";
"engine", "host_ram"), or the number as text when this SDK is older than the server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import grpc

from cag.client.errors import CagClientError, client_error
from cag.v1 import common_pb2


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The router's decision (cag.v1.RouteDecision)."""

    decision_id: str
    tenant: str
    route: str  # "" when nothing matched
    module_ids: tuple[str, ...]  # root first; empty on the fallback path
    module_version: int  # of the leaf module
    basis: str  # "metadata" | "rule" | "classifier" | "none"
    rule_id: str
    rule_version: int
    confidence: float  # 1.0 for metadata and rules, the classifier's score otherwise
    path: str  # "module" | "fallback"
    reason: str


@dataclass(frozen=True, kw_only=True)
class ServedModule:
    module_id: str
    version: int
    tier: str  # where its rows came from: "engine" | "host_ram" | "local_disk" | "origin"


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """A retrieved chunk a fallback answer was generated from: characters [char_start, char_end) of the document
    at `path` in the source `source_uri`."""

    chunk_id: str
    source_uri: str
    path: str
    char_start: int
    char_end: int


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The final record of an answer (cag.v1.GenerateSummary); times in milliseconds."""

    path: str
    module_ids: tuple[str, ...]
    modules: tuple[ServedModule, ...]  # module path: version and tier of each module, root first
    evidence_ids: tuple[str, ...]  # fallback path
    finish_reason: str  # "stop" | "length" | "cancelled"
    tokens: int
    prefill_tokens: int
    cached_tokens: int
    ttft_ms: float
    total_ms: float
    queue_ms: float
    restore_ms: float
    prefill_ms: float
    decode_ms: float
    trace_id: str  # "" when tracing is off
    evidence: tuple[Evidence, ...] = ()  # fallback path: each chunk in prompt order, with its place in its source


@dataclass(frozen=True, kw_only=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]
    decision: Decision | None  # None only from a server that sends none
    summary: Summary

    def to_dict(self) -> dict[str, Any]:
        """The whole record as JSON-ready values."""
        return dataclasses.asdict(self)


def decision_of(message: common_pb2.RouteDecision) -> Decision:
    return Decision(
        decision_id=message.decision_id,
        tenant=message.tenant_id,
        route=message.route,
        module_ids=tuple(message.module_ids),
        module_version=message.module_version,
        basis=_name(common_pb2.RouteBasis, message.basis, "ROUTE_BASIS_"),
        rule_id=message.rule_id,
        rule_version=message.rule_version,
        confidence=message.confidence,
        path=_name(common_pb2.AnswerPath, message.path, "ANSWER_PATH_"),
        reason=message.reason,
    )


def summary_of(message: common_pb2.GenerateSummary) -> Summary:
    modules = tuple(
        ServedModule(module_id=m.module_id, version=m.version, tier=_name(common_pb2.Tier, m.tier, "TIER_"))
        for m in message.modules
    )
    return Summary(
        path=_name(common_pb2.AnswerPath, message.path, "ANSWER_PATH_"),
        module_ids=tuple(message.module_ids),
        modules=modules,
        evidence_ids=tuple(message.evidence_ids),
        finish_reason=_name(common_pb2.FinishReason, message.finish_reason, "FINISH_REASON_"),
        tokens=message.tokens,
        prefill_tokens=message.prefill_tokens,
        cached_tokens=message.cached_tokens,
        ttft_ms=message.ttft_ms,
        total_ms=message.total_ms,
        queue_ms=message.queue_ms,
        restore_ms=message.restore_ms,
        prefill_ms=message.prefill_ms,
        decode_ms=message.decode_ms,
        trace_id=message.trace_id,
        evidence=tuple(
            Evidence(
                chunk_id=e.chunk_id,
                source_uri=e.source_uri,
                path=e.path,
                char_start=e.char_start,
                char_end=e.char_end,
            )
            for e in message.evidence
        ),
    )


def _name(enum: Any, value: int, prefix: str) -> str:
    """enum: a generated proto enum class (typed by mypy-protobuf as a class of its own, not EnumTypeWrapper)."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:  # a value added to the proto after this SDK was built
        return str(value)


class AnswerBuilder:
    """Folds one Generate stream, in order: at most one decision first, then token chunks, then exactly one
    summary. A stream out of that order is refused (a server bug) rather than half-read."""

    def __init__(self) -> None:
        self.decision: Decision | None = None
        self.tokens_seen = False
        self._text: list[str] = []
        self._token_ids: list[int] = []
        self._summary: Summary | None = None

    def add(self, event: common_pb2.GenerateResponse) -> str:
        """Takes the next event; returns the text it adds to the answer ("" for all but token chunks)."""
        kind = event.WhichOneof("event")
        if self._summary is not None:
            raise _out_of_order(f"a {kind} after the final record")
        if kind == "decision":
            if self.decision is not None or self.tokens_seen:
                raise _out_of_order("a decision after the first decision or token")
            self.decision = decision_of(event.decision)
        elif kind == "token":
            self.tokens_seen = True
            self._text.append(event.token.text)
            self._token_ids.extend(event.token.token_ids)
            return event.token.text
        elif kind == "done":
            self._summary = summary_of(event.done)
        else:
            raise _out_of_order("an empty event")
        return ""

    def answer(self) -> Answer:
        """The answer once the final record arrived."""
        if self._summary is None:
            raise client_error(grpc.StatusCode.INTERNAL, "the answer stream ended before its final record",
                               reason="INCOMPLETE_STREAM")  # fmt: skip
        return Answer(
            text="".join(self._text), token_ids=tuple(self._token_ids), decision=self.decision, summary=self._summary
        )


def _out_of_order(what: str) -> CagClientError:
    return client_error(grpc.StatusCode.INTERNAL, f"the router sent {what}", reason="STREAM_OUT_OF_ORDER")
