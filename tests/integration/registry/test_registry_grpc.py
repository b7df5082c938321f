"""The registry over gRPC: a real server (build_server) over RegistryCore(PostgresStore) and a real client channel."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cag.acl import AclScope
from cag.auth import Caller, Scope
from cag.kvmodule import ModuleFile
from cag.metadata import FORMAT_VERSION, GoldenStatus, ModuleMetadata
from cag.registry.core import RegistryCore
from cag.registry.core.records import ModuleChange, ModuleRecord
from cag.registry.db.store import PostgresStore
from cag.registry.servicer import SERVICE_NAME
from cag.rpc.errors import ERROR_DOMAIN, INTERNAL_MESSAGE, error_details
from cag.v1 import common_pb2, registry_pb2
from tests.registry_population import make_metadata
from tests.registry_server import Client, RegistryServer, fails, message_of, serve_registry

Code = grpc.StatusCode


@pytest.fixture
def registry(server: RegistryServer) -> Client:
    """An admin client: these tests are about the API; permissions are tested in test_registry_hostile.py."""
    return server.admin()


# --- real module files (compiled with the tiny model) ---


def file_metadata(path: Path, **changes: Any) -> ModuleMetadata:
    """The header of a real module file, registered at its path.

    The tiny model fails its golden questions; the registry trusts the registered golden status, so the
    file's module is registered as passed to be publishable.
    """
    metadata = ModuleFile.open(path).metadata
    return dataclasses.replace(metadata, golden_status=GoldenStatus.PASSED, golden_results="[]", **changes)


# --- Register / Get ---


def hex_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def full_module() -> common_pb2.Module:
    """Every file field set by hand (not through the adapter's own conversion), plus registry fields to ignore."""
    root = make_metadata("root-1")
    return common_pb2.Module(
        module_id="billing-child", tenant_id="acme", route="billing", model_name="smollm2",
        model_revision="rev-a", tokenizer_revision="tok-1", context_checksum=hex_of("ctx-1"),
        source_checksum=hex_of("src-1"), token_count=42, dtype="fp32", storage_uri="file:///modules/billing-child.safetensors",
        acl_scope=common_pb2.ACL_SCOPE_WORKSPACE, acl_principal="ws-7",
        created_at=Timestamp(seconds=1767225600), expires_at=Timestamp(seconds=1798761600),
        layout_id="support.v1", layout_hash=root.layout_hash, layout=root.layout,
        parent_id="root-1", parent_chain_hash=root.chain_hash, chain_hash=hex_of("chain-child"),
        engine_fingerprint="llama;test", golden_status=common_pb2.GOLDEN_STATUS_PASSED,
        golden_results=[
            common_pb2.GoldenResult(question="Refunds?", expect=["30 days", "receipt"], answer="30 days, receipt",
                                    passed=True),
            common_pb2.GoldenResult(question="Fees?", expect=["none"], answer="none", passed=True),
        ],
        tensor_checksum="blake3:" + "ab" * 32, format_version=FORMAT_VERSION, source_uri="git://kb/acme/billing",
        header_sha256=hex_of("header"),
        # registry-owned: ignored on Register
        version=7, state=common_pb2.MODULE_STATE_PUBLISHED, state_reason="forged", published_at=Timestamp(seconds=5),
    )  # fmt: skip


async def test_register_then_get_round_trips_every_field(registry: Client) -> None:
    await registry.register(make_metadata("root-1"))
    sent = full_module()
    registered = (await registry.stub.Register(registry_pb2.RegisterRequest(module=sent))).module
    got = await registry.get("billing-child")
    assert got == registered
    assert got.state == common_pb2.MODULE_STATE_VALIDATING
    assert got.version == 0
    assert got.state_reason == ""
    assert got.HasField("registered_at") and got.HasField("state_changed_at")
    assert not got.HasField("published_at")
    expected = common_pb2.Module()
    expected.CopyFrom(sent)
    for name in ("version", "state", "state_reason", "published_at", "registered_at", "state_changed_at"):
        expected.ClearField(name)
    for name in ("registered_at", "state_changed_at"):
        getattr(expected, name).CopyFrom(getattr(got, name))
    expected.state = common_pb2.MODULE_STATE_VALIDATING
    assert got == expected


async def test_register_is_idempotent_and_refuses_other_content(registry: Client) -> None:
    first = await registry.register(make_metadata("m-1"))
    assert await registry.register(make_metadata("m-1")) == first
    other = make_metadata("m-1", tensor_checksum="blake3:" + "ff" * 32)
    await fails(registry.register(other), Code.ALREADY_EXISTS, reason="ALREADY_REGISTERED")


async def test_register_requires_identity_fields(registry: Client) -> None:
    for field in ("module_id", "tenant_id", "route", "model_name", "model_revision", "tokenizer_revision",
                  "source_uri"):  # fmt: skip
        message = message_of(make_metadata("m-1"), "git://kb/acme/billing")
        message.ClearField(field)
        request = registry_pb2.RegisterRequest(module=message)
        error = await fails(registry.stub.Register(request), Code.INVALID_ARGUMENT, reason="INVALID_FIELD", field=field)
        assert field in (error.details() or "")
    no_scope = message_of(make_metadata("m-1"), "git://kb/acme/billing")
    no_scope.acl_scope = common_pb2.ACL_SCOPE_UNSPECIFIED
    await fails(registry.stub.Register(registry_pb2.RegisterRequest(module=no_scope)), Code.INVALID_ARGUMENT,
                field="acl_scope")  # fmt: skip


async def test_malformed_ids_are_invalid_argument(registry: Client) -> None:
    bad = "BAD ID!"
    await fails(registry.register(make_metadata(bad)), Code.INVALID_ARGUMENT, reason="INVALID_FIELD", field="module_id")
    await fails(registry.register(make_metadata("m-1", tenant_id=bad)), Code.INVALID_ARGUMENT)
    await fails(registry.get(bad), Code.INVALID_ARGUMENT)
    await fails(registry.publish(bad), Code.INVALID_ARGUMENT)
    await fails(registry.stub.ResolveRoute(registry_pb2.ResolveRouteRequest(tenant_id=bad, route="billing")),
                Code.INVALID_ARGUMENT)  # fmt: skip
    await fails(registry.stub.Rollback(registry_pb2.RollbackRequest(tenant_id="acme", route=bad, to_version=1)),
                Code.INVALID_ARGUMENT)  # fmt: skip


async def test_unknown_ids_and_routes_are_not_found(registry: Client) -> None:
    await fails(registry.get("nope"), Code.NOT_FOUND, reason="REGISTRY_NOT_FOUND")
    await fails(registry.publish("nope"), Code.NOT_FOUND)
    orphan = make_metadata("child", parent_id="nope", parent_chain_hash=hex_of("x"))
    await fails(registry.register(orphan), Code.NOT_FOUND)
    await fails(registry.stub.ResolveRoute(registry_pb2.ResolveRouteRequest(tenant_id="acme", route="nowhere")),
                Code.NOT_FOUND)  # fmt: skip
    await fails(registry.stub.Rollback(registry_pb2.RollbackRequest(tenant_id="acme", route="billing", to_version=3)),
                Code.NOT_FOUND)  # fmt: skip


# --- Publish ---


async def test_publish_refuses_failed_golden_tests(registry: Client) -> None:
    await registry.register(make_metadata("m-1", golden_status=GoldenStatus.FAILED))
    error = await fails(registry.publish("m-1"), Code.FAILED_PRECONDITION, reason="PUBLISH_REFUSED")
    assert "golden" in (error.details() or "")
    assert (await registry.get("m-1")).state == common_pb2.MODULE_STATE_QUARANTINED  # kept, never publishable


async def test_publish_never_opens_the_storage_uri(registry: Client, tmp_path: Path) -> None:
    """The registry keeps checksums, not files: a path to a secret or a FIFO is never opened (the FIFO would
    block a reader forever, and an error quoting the file's first bytes would leak it)."""
    fifo = tmp_path / "module.fifo"
    os.mkfifo(fifo)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    for name, target in (("m-fifo", fifo), ("m-secret", secret), ("m-dir", tmp_path)):
        await registry.register(make_metadata(name, route=name), storage_uri=target.as_uri())
        published = await asyncio.wait_for(registry.publish(name), timeout=10)
        assert published.state == common_pb2.MODULE_STATE_PUBLISHED
        assert "secret-hash" not in str(published)


async def test_publish_a_verified_module(registry: Client, tiny_chain: tuple[Path, Path]) -> None:
    root, _ = tiny_chain
    metadata = file_metadata(root)
    await registry.register(metadata)
    published = await registry.publish(metadata.module_id)
    assert (published.state, published.version) == (common_pb2.MODULE_STATE_PUBLISHED, 1)
    assert published.HasField("published_at")
    assert await registry.publish(metadata.module_id) == published  # idempotent
    assert await registry.get(metadata.module_id) == published


async def test_concurrent_publishes_with_the_same_expected_version(
    registry: Client,
) -> None:
    for name in ("first", "second"):
        await registry.register(make_metadata(name))
    results = await asyncio.gather(
        registry.publish("first", expected_version=1), registry.publish("second", expected_version=1),
        return_exceptions=True,
    )  # fmt: skip
    won = [r for r in results if isinstance(r, common_pb2.Module)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert won[0].version == 1
    assert lost[0].code() == Code.ABORTED
    loser = "second" if won[0].module_id == "first" else "first"
    assert (await registry.get(loser)).state == common_pb2.MODULE_STATE_VALIDATING


# --- ResolveRoute / Rollback ---


async def test_resolve_route_returns_the_chain_root_first(registry: Client, tiny_chain: tuple[Path, Path]) -> None:
    root, child = (file_metadata(path) for path in tiny_chain)
    for metadata in (root, child):
        await registry.register(metadata)
        await registry.publish(metadata.module_id)
    resolved = await registry.stub.ResolveRoute(
        registry_pb2.ResolveRouteRequest(tenant_id=child.tenant_id, route=child.route)
    )
    assert [m.module_id for m in resolved.chain] == [root.module_id, child.module_id]
    assert resolved.route_version == 1
    assert all(m.state == common_pb2.MODULE_STATE_PUBLISHED for m in resolved.chain)


async def test_resolve_route_refuses_a_chain_that_is_no_longer_servable(registry: Client) -> None:
    """A stale or invalidated chain member is its own error (MODULE_NOT_SERVABLE: the router's cue to take the
    fallback path), naming the first such module root first and its state."""
    root = make_metadata("m-root", source_checksum=hex_of("old"))
    child = make_metadata("m-leaf", route="faq", parent_id="m-root", parent_chain_hash=root.chain_hash)
    for metadata in (root, child):
        await registry.register(metadata, "git://kb/acme/billing")
        await registry.publish(metadata.module_id)
    resolve = registry_pb2.ResolveRouteRequest(tenant_id="acme", route="faq")
    assert [m.module_id for m in (await registry.stub.ResolveRoute(resolve)).chain] == ["m-root", "m-leaf"]

    changed = registry_pb2.SourceTrigger(tenant_id="acme", source_uri="git://kb/acme/billing", new_checksum="new")
    await registry.stub.Invalidate(registry_pb2.InvalidateRequest(source=changed))
    for state, trigger in (
        ("stale", None),
        ("invalidated", registry_pb2.InvalidateRequest(module=registry_pb2.ModuleTrigger(module_id="m-root"))),
    ):
        if trigger is not None:
            await registry.stub.Invalidate(trigger)
        error = await fails(registry.stub.ResolveRoute(resolve), Code.FAILED_PRECONDITION, reason="MODULE_NOT_SERVABLE")
        details = error_details(error)
        assert details is not None and details.domain == ERROR_DOMAIN
        assert (details.metadata["module"], details.metadata["state"]) == ("m-root", state)
        assert f"module m-root is {state}" in (error.details() or "")


async def test_rollback_points_the_route_at_an_earlier_version(
    registry: Client,
) -> None:
    for name in ("v-one", "v-two"):
        await registry.register(make_metadata(name, route="faq"))
        await registry.publish(name)
    request = registry_pb2.ResolveRouteRequest(tenant_id="acme", route="faq")
    assert (await registry.stub.ResolveRoute(request)).route_version == 2
    rollback = registry_pb2.RollbackRequest(tenant_id="acme", route="faq", to_version=1, reason="bad answers")
    back = (await registry.stub.Rollback(rollback)).module
    assert (back.module_id, back.version) == ("v-one", 1)
    history = registry.stub.Watch(registry_pb2.WatchRequest(since_sequence=0, tenant_id="acme"))
    changes = [await read(history) for _ in range(3)]  # two publishes, then the rollback
    history.cancel()
    assert changes[-1].reason == "rollback to version 1 — by service:test-admin: bad answers"
    resolved = await registry.stub.ResolveRoute(request)
    assert (resolved.route_version, resolved.chain[-1].module_id) == (1, "v-one")
    too_low = registry_pb2.RollbackRequest(tenant_id="acme", route="faq", to_version=0)
    await fails(registry.stub.Rollback(too_low), Code.INVALID_ARGUMENT)


# --- Invalidate ---


async def test_invalidate_each_trigger_kind_returns_the_affected_modules(registry: Client) -> None:
    modules = [
        (make_metadata("m-src", source_checksum=hex_of("old")), "git://kb/acme/faq"),
        (make_metadata("m-model", model_name="tinyllama", model_revision="r1"), "git://kb/acme/billing"),
        (make_metadata("m-tok", tokenizer_revision="tok-old"), "git://kb/acme/billing"),
        (make_metadata("m-acl", tenant_id="globex", acl_scope=AclScope.USER, acl_principal="u-1"), "git://kb/globex/a"),
        (make_metadata("m-layout", layout_id="agent.v3", layout_hash="lh-old"), "git://kb/acme/billing"),
        (make_metadata("m-root"), "git://kb/acme/billing"),
        (make_metadata("m-child", parent_id="m-root", parent_chain_hash=make_metadata("m-root").chain_hash),
         "git://kb/acme/billing"),
    ]  # fmt: skip
    for metadata, source_uri in modules:
        await registry.register(metadata, source_uri)
    pb = registry_pb2
    cases = [
        (pb.InvalidateRequest(source=pb.SourceTrigger(tenant_id="acme", source_uri="git://kb/acme/faq",
                                                    new_checksum="new")), ["m-src"]),
        (pb.InvalidateRequest(model=pb.ModelTrigger(model_name="tinyllama", new_revision="r2")), ["m-model"]),
        (pb.InvalidateRequest(tokenizer=pb.TokenizerTrigger(tokenizer_revision="tok-old")), ["m-tok"]),
        (pb.InvalidateRequest(acl=common_pb2.Acl(scope=common_pb2.ACL_SCOPE_USER, tenant_id="globex",
                                                principal="u-1")), ["m-acl"]),
        (pb.InvalidateRequest(layout=pb.LayoutTrigger(layout_id="agent.v3", layout_hash="lh-new")), ["m-layout"]),
        (pb.InvalidateRequest(module=pb.ModuleTrigger(module_id="m-root")), ["m-child", "m-root"]),
    ]  # fmt: skip
    event_ids = set()
    for request, affected in cases:
        response = await registry.stub.Invalidate(request)
        assert sorted(response.module_ids) == affected, request
        event_ids.add(response.event_id)
    assert len(event_ids) == len(cases) and "" not in event_ids
    assert (await registry.get("m-src")).state == common_pb2.MODULE_STATE_STALE
    for module_id in ("m-model", "m-tok", "m-acl", "m-layout", "m-root", "m-child"):
        assert (await registry.get(module_id)).state == common_pb2.MODULE_STATE_INVALIDATED
    why = pb.InvalidateRequest(module=pb.ModuleTrigger(module_id="m-src"), reason="source withdrawn")
    await registry.stub.Invalidate(why)
    assert (await registry.get("m-src")).state_reason.endswith("— by service:test-admin: source withdrawn")
    again = await registry.stub.Invalidate(cases[1][0])
    assert list(again.module_ids) == []


async def test_invalidate_refuses_malformed_triggers(registry: Client) -> None:
    pb = registry_pb2
    public = pb.InvalidateRequest(acl=common_pb2.Acl(scope=common_pb2.ACL_SCOPE_PUBLIC, tenant_id="public"))
    await fails(registry.stub.Invalidate(public), Code.INVALID_ARGUMENT)
    await fails(registry.stub.Invalidate(pb.InvalidateRequest(reason="why")), Code.INVALID_ARGUMENT, field="trigger")
    blank = pb.InvalidateRequest(model=pb.ModelTrigger(model_name="smollm2"))
    await fails(registry.stub.Invalidate(blank), Code.INVALID_ARGUMENT, field="model.new_revision")


# --- List ---


async def test_list_filters_and_pages(registry: Client) -> None:
    for i in range(5):
        await registry.register(make_metadata(f"billing-{i}"))
    await registry.register(make_metadata("shipping-0", route="shipping", model_name="tinyllama", layout_id="agent.v3"))
    for i in range(2):
        await registry.register(make_metadata(f"globex-{i}", tenant_id="globex"), "git://kb/globex/billing")
    pages, token = [], ""
    while True:
        request = registry_pb2.ListModulesRequest(tenant_id="acme", route="billing", page_size=2, page_token=token)
        response = await registry.stub.List(request)
        pages.append([m.module_id for m in response.modules])
        assert all(m.layout == "" for m in response.modules)  # List omits the layout
        token = response.next_page_token
        if not token:
            break
    assert pages == [["billing-0", "billing-1"], ["billing-2", "billing-3"], ["billing-4"]]

    async def ids(**filters: Any) -> list[str]:
        response = await registry.stub.List(registry_pb2.ListModulesRequest(**filters))
        return sorted(m.module_id for m in response.modules)

    assert await ids(model_name="tinyllama") == ["shipping-0"]
    assert await ids(layout_id="agent.v3") == ["shipping-0"]
    assert await ids(tenant_id="globex", state=common_pb2.MODULE_STATE_VALIDATING) == ["globex-0", "globex-1"]
    assert await ids(state=common_pb2.MODULE_STATE_PUBLISHED) == []
    assert len(await ids()) == 8


async def test_list_refuses_bad_paging_and_filters(registry: Client) -> None:
    list_modules = registry.stub.List
    await fails(list_modules(registry_pb2.ListModulesRequest(page_token="not-a-token")), Code.INVALID_ARGUMENT)
    await fails(list_modules(registry_pb2.ListModulesRequest(page_size=-1)), Code.INVALID_ARGUMENT, field="page_size")
    await fails(list_modules(registry_pb2.ListModulesRequest(state=99)), Code.INVALID_ARGUMENT, field="state")  # type: ignore[arg-type]


# --- Watch ---


async def read(call: Any) -> registry_pb2.ModuleChange:
    change = await asyncio.wait_for(call.read(), timeout=10)
    assert change is not grpc.aio.EOF  # type: ignore[attr-defined]
    return change  # type: ignore[no-any-return]


async def test_watch_streams_changes_after_since_sequence(
    registry: Client,
) -> None:
    await registry.register(make_metadata("w-one"))
    await registry.register(make_metadata("w-two"))
    await registry.publish("w-one")

    history = registry.stub.Watch(registry_pb2.WatchRequest(since_sequence=0))
    first = await read(history)
    history.cancel()
    assert (first.module_id, first.state, first.version) == ("w-one", common_pb2.MODULE_STATE_PUBLISHED, 1)
    assert first.subject == "cag.module.published" and first.HasField("occurred_at")
    assert first.event_id and first.reason == "published by service:test-admin"

    live = registry.stub.Watch(registry_pb2.WatchRequest(since_sequence=first.sequence, tenant_id="acme"))
    await registry.publish("w-two")
    second = await read(live)  # the first change after `first`: nothing older was sent again
    assert (second.module_id, second.version) == ("w-two", 2)
    assert second.sequence > first.sequence
    assert live.cancel()
    assert await live.code() == Code.CANCELLED

    negative = registry.stub.Watch(registry_pb2.WatchRequest(since_sequence=-1))
    await fails(negative.read(), Code.INVALID_ARGUMENT)


# --- unexpected errors, health, reflection ---


class BrokenCore(RegistryCore):
    """A core whose publish and change feed fail like a bug would (details must not reach the client)."""

    async def publish(self, caller: Caller, module_id: str, *, expected_version: int | None = None) -> ModuleRecord:
        raise RuntimeError("secret detail")

    async def changes_since(
        self, caller: Caller, sequence: int, *, tenant_id: str | None = None, limit: int = 100
    ) -> list[ModuleChange]:
        raise RuntimeError("secret detail")


async def test_unexpected_errors_become_internal_with_a_generic_message(store: PostgresStore) -> None:
    async with serve_registry(BrokenCore(store)) as server:
        client = server.admin()
        await client.register(make_metadata("m-1"))
        error = await fails(client.publish("m-1"), Code.INTERNAL, reason="INTERNAL")
        assert error.details() == INTERNAL_MESSAGE
        stream = client.stub.Watch(registry_pb2.WatchRequest())
        error = await fails(stream.read(), Code.INTERNAL, reason="INTERNAL")
        assert "secret" not in (error.details() or "")


async def test_health_is_serving_and_reflection_lists_the_service(registry: Client, server: RegistryServer) -> None:
    health = health_pb2_grpc.HealthStub(registry.channel)
    for service in (SERVICE_NAME, ""):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(registry.channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=(("authorization", f"Bearer {server.token('service:test', [Scope.READ], ['acme'])}"),),
    )
    response = await call.read()
    names = {s.name for s in response.list_services_response.service}
    assert {"cag.v1.RegistryService", "grpc.health.v1.Health"} <= names
    assert SERVICE_NAME == "cag.v1.RegistryService"
