"""Protos promise only what code does: every field of every request a servicer handles is read by its handler.

Each method of each served service is called with a request that sets every field (one run per oneof member),
wrapped so that reading a field (attribute, getattr or HasField), of the request or of any cag.v1 message
inside it, is recorded. The servicer runs against a core double that accepts anything. A field no handler
reads fails the test, unless it is listed in IGNORED with the comment in the .proto that says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cag.acl import AclScope
from cag.auth.caller import SYSTEM
from cag.lifecycle import StopSignal
from cag.registry import servicer as registry_servicer
from cag.registry.convert import module_of
from cag.registry.core import RegistryCore
from cag.registry.core.audit import AuditQuery, encode_audit_token
from cag.registry.core.records import ModuleRecord
from cag.registry.core.route_rules import RuleSet
from cag.registry.core.states import ModuleState
from cag.registry.core.store import ListQuery, RouteResolution, encode_page_token
from cag.v1 import cachepool_pb2, common_pb2, compiler_pb2, fallback_pb2, registry_pb2, router_pb2
from tests.registry_population import make_metadata

PROTO_MODULES: tuple[ModuleType, ...] = (registry_pb2, router_pb2, cachepool_pb2, compiler_pb2, fallback_pb2)
# The router's and the cache pool's requests are walked in tests/unit/rpc/test_serving_request_fields.py.
SERVED = {"cag.v1.RegistryService", "cag.v1.RouterService", "cag.v1.CachePoolService"}
# Protos whose servers do not exist yet: nothing reads their requests, so nothing is checked; when a servicer
# lands it moves to SERVED, with seeds for its requests.
NOT_YET_SERVED = {"cag.v1.CompilerService", "cag.v1.FallbackService"}
# (message, field) → why no handler reads it; each reason is written in the .proto too.
IGNORED = {
    ("cag.v1.Module", name): "registry-owned: RegisterRequest says Register ignores it"
    for name in ("version", "state", "state_reason", "registered_at", "published_at", "state_changed_at")
}

Reads = set[tuple[str, str]]


class Recorded:
    """A read-only view of a message that records which of its fields are read."""

    def __init__(self, message: Message, reads: Reads) -> None:
        object.__setattr__(self, "_message", message)
        object.__setattr__(self, "_reads", reads)

    def _field(self, name: str) -> FieldDescriptor | None:
        return cast("FieldDescriptor | None", self._message.DESCRIPTOR.fields_by_name.get(name))

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._message, name)
        field = self._field(name)
        if field is None:
            return value
        self._reads.add((self._message.DESCRIPTOR.full_name, name))
        return recorded(value, field, self._reads)

    def HasField(self, name: str) -> bool:  # noqa: N802 (the protobuf API's name)
        if self._field(name) is not None:
            self._reads.add((self._message.DESCRIPTOR.full_name, name))
        return self._message.HasField(name)


def is_ours(descriptor: Descriptor) -> bool:
    """A cag.v1 message whose own fields are walked (a map's entry type is not: the map is one field)."""
    return descriptor.full_name.startswith("cag.v1.") and not descriptor.GetOptions().map_entry


def recorded(value: Any, field: FieldDescriptor, reads: Reads) -> Any:
    if field.message_type is None or not is_ours(field.message_type):
        return value
    if field.is_repeated:
        return [Recorded(item, reads) for item in value]
    return Recorded(value, reads)


# --- requests that set every field, valid enough to get past each handler's checks ---


def _sha(label: str) -> str:
    return f"{abs(hash(label)) % 16**8:08x}" * 8


def _timestamp(year: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(year, 1, 1, tzinfo=UTC))
    return stamp


def full_module() -> common_pb2.Module:
    """A Module with every field set, the registry-owned ones included."""
    results = [{"question": "Price?", "expect": ["5"], "answer": "5", "passed": True}]
    metadata = make_metadata(
        "billing-a", acl_scope=AclScope.WORKSPACE, acl_principal="ws-1", expires_at="2030-01-01T00:00:00Z",
        parent_id="system-a", parent_chain_hash=_sha("parent"), golden_results=json.dumps(results),
    )  # fmt: skip
    record = ModuleRecord(
        metadata=metadata, source_uri="git://kb/acme/billing", storage_uri="file:///m/billing-a.safetensors",
        header_sha256=_sha("header"), state=ModuleState.PUBLISHED, state_reason="set by a client", version=3,
        registered_at=datetime(2026, 1, 2, tzinfo=UTC), published_at=datetime(2026, 1, 3, tzinfo=UTC),
        state_changed_at=datetime(2026, 1, 3, tzinfo=UTC),
    )  # fmt: skip
    return module_of(record)


R = registry_pb2
SEEDS: dict[str, list[Message]] = {
    "Register": [R.RegisterRequest(module=full_module())],
    "Publish": [R.PublishRequest(module_id="billing-a", expected_version=2)],
    "Get": [R.GetModuleRequest(module_id="billing-a")],
    "List": [
        R.ListModulesRequest(
            tenant_id="acme",
            route="billing",
            state=common_pb2.MODULE_STATE_PUBLISHED,
            model_name="smollm2",
            layout_id="support.v1",
            page_size=2,
            page_token=encode_page_token("billing-a"),
        )
    ],
    "ResolveRoute": [R.ResolveRouteRequest(tenant_id="acme", route="billing")],
    "Invalidate": [
        R.InvalidateRequest(
            source=R.SourceTrigger(tenant_id="acme", source_uri="git://kb/acme", new_checksum=_sha("s")), reason="r"
        ),
        R.InvalidateRequest(model=R.ModelTrigger(model_name="smollm2", new_revision="rev-b"), reason="r"),
        R.InvalidateRequest(tokenizer=R.TokenizerTrigger(tokenizer_revision="tok-1"), reason="r"),
        R.InvalidateRequest(
            acl=common_pb2.Acl(scope=common_pb2.ACL_SCOPE_WORKSPACE, tenant_id="acme", principal="ws-1"), reason="r"
        ),
        R.InvalidateRequest(layout=R.LayoutTrigger(layout_id="support.v1", layout_hash=_sha("l")), reason="r"),
        R.InvalidateRequest(module=R.ModuleTrigger(module_id="billing-a"), reason="r"),
    ],
    "Rollback": [R.RollbackRequest(tenant_id="acme", route="billing", to_version=1, reason="r")],
    "Watch": [R.WatchRequest(since_sequence=5, tenant_id="acme")],
    "ListAudit": [R.ListAuditRequest(tenant_id="acme", page_size=2, page_token=encode_audit_token(5))],
    "Quarantine": [R.QuarantineRequest(module_id="billing-a", reason="tensor checksum mismatch in host RAM")],
    "PutRouteRules": [
        R.PutRouteRulesRequest(
            tenant_id="acme",
            rules=[R.RouteRule(rule_id="r1", route="billing", metadata={"intent": "billing"}, keywords=["refund"])],
            routes=[R.RouteInfo(route="billing", description="Invoices and refunds", priority=2)],
            expected_version=1,
            reason="r",
        )
    ],
    "GetRouteRules": [R.GetRouteRulesRequest(tenant_id="acme", version=1)],
}


class AnythingCore:
    """A RegistryCore double: every method accepts any arguments and answers with one plausible record."""

    def __init__(self, stopping: StopSignal) -> None:
        self.stopping = stopping
        self.record = ModuleRecord(
            metadata=make_metadata("billing-a"), source_uri="s", state=ModuleState.PUBLISHED, version=1
        )

    def __getattr__(self, name: str) -> Any:
        answers: dict[str, Any] = {
            "list_modules": ([self.record], ""),
            "resolve_route": RouteResolution(tenant_id="acme", route="billing", version=1, chain=[self.record]),
            "invalidate": ("evt-1", [self.record]),
            "changes_since": [],
            "list_audit": ([], ""),
            "put_route_rules": RuleSet(tenant_id="acme", version=2),
            "get_route_rules": RuleSet(tenant_id="acme", version=1),
        }

        async def answer(*args: Any, **kwargs: Any) -> Any:
            for arg in [*args, *kwargs.values()]:  # what a real core would read, it reads here too
                if isinstance(arg, ListQuery | AuditQuery):
                    dataclasses.asdict(arg)
            if name == "changes_since":
                self.stopping.set()  # Watch: one poll is enough
            return answers.get(name, self.record)

        return answer


# --- the walk ---


def services() -> Iterator[ServiceDescriptor]:
    for module in PROTO_MODULES:
        yield from module.DESCRIPTOR.services_by_name.values()


def fields_of(descriptor: Descriptor, seen: set[str] | None = None) -> Iterator[tuple[str, str]]:
    """(message, field) for every field of `descriptor` and of the cag.v1 messages it holds, recursively."""
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        yield descriptor.full_name, field.name
        if field.message_type is not None and is_ours(field.message_type):
            yield from fields_of(field.message_type, seen)


def set_fields(message: Message) -> Iterator[tuple[str, str]]:
    """(message, field) for every field set in `message` and in the cag.v1 messages it holds."""
    for field, value in message.ListFields():
        yield message.DESCRIPTOR.full_name, field.name
        if field.message_type is not None and is_ours(field.message_type):
            for item in value if field.is_repeated else [value]:
                yield from set_fields(item)


async def call(method: str, request: Message) -> Reads:
    reads: Reads = set()
    stopping = StopSignal()
    servicer = registry_servicer.RegistryServicer(
        cast("RegistryCore", AnythingCore(stopping)), poll_interval=0.0, stopping=stopping
    )
    proxy = cast("Any", Recorded(request, reads))
    answer = getattr(servicer, method)(proxy, None)
    if isinstance(answer, AsyncIterator):
        async for _ in answer:
            pass
    else:
        await answer
    return reads


def test_every_service_is_served_or_listed_as_not_yet_served() -> None:
    names = {s.full_name for s in services()}
    assert names == SERVED | NOT_YET_SERVED, "a new service: serve it (and seed its requests) or list it here"
    assert not SERVED & NOT_YET_SERVED


def test_seeds_cover_every_method_and_set_every_field() -> None:
    registry = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
    assert set(SEEDS) == set(registry.methods_by_name), "seed every method of every served service"
    for name, method in registry.methods_by_name.items():
        assert all(seed.DESCRIPTOR is method.input_type for seed in SEEDS[name])
        unset = set(fields_of(method.input_type)) - {f for seed in SEEDS[name] for f in set_fields(seed)}
        assert not unset, f"{name}: the seeds leave {sorted(unset)} unset; set them so the walk can check them"


@pytest.mark.parametrize("method", sorted(SEEDS))
async def test_every_request_field_is_read_by_its_handler(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_servicer, "current_caller", lambda: SYSTEM)
    reads: Reads = set()
    for seed in SEEDS[method]:
        reads |= await call(method, seed)
    input_type = SEEDS[method][0].DESCRIPTOR
    unread = sorted(set(fields_of(input_type)) - reads - set(IGNORED))
    assert not unread, f"{method}: no handler reads {unread}; implement them or remove them from the proto"


def test_ignored_fields_are_the_ones_the_proto_says_are_ignored() -> None:
    text = (Path(__file__).resolve().parents[3] / "protos" / "cag" / "v1" / "registry.proto").read_text()
    assert "Registry-owned fields (version, state, state_reason, *_at except created_at/expires_at) are ignored" in (
        " ".join(line.strip().removeprefix("// ") for line in text.splitlines())
    )
    module = common_pb2.Module.DESCRIPTOR.fields_by_name
    for message, field in IGNORED:
        assert message == "cag.v1.Module" and field in module
        assert field in ("version", "state", "state_reason") or (field.endswith("_at") and field not in (
            "created_at", "expires_at"
        ))  # fmt: skip
