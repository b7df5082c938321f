"""The registry over gRPC: a real server (build_server) over RegistryCore(PostgresStore) and a real client channel."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cag.grpc.errors import INTERNAL_MESSAGE, decode_error_info
from cag.grpc.server import build_server
from cag.infra.ports import free_port
from cag.kvmodule import AclScope, GoldenStatus, ModuleFile, ModuleMetadata
from cag.registry.convert import module_of
from cag.registry.core import RegistryCore
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.store import PostgresStore
from cag.registry.records import ModuleChange, ModuleRecord
from cag.registry.servicer import SERVICE_NAME, RegistryServicer
from cag.registry.states import ModuleState
from cag.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tests.infra_fixtures import FreshDatabase
from tests.registry_population import make_metadata

Code = grpc.StatusCode


@dataclass
class Client:
    stub: Any  # registry_pb2_grpc.RegistryServiceStub on an aio channel
    channel: grpc.aio.Channel

    async def register(self, metadata: ModuleMetadata, source_uri: str = "git://kb/acme/billing") -> common_pb2.Module:
        response = await self.stub.Register(registry_pb2.RegisterRequest(module=message_of(metadata, source_uri)))
        return response.module  # type: ignore[no-any-return]

    async def publish(self, module_id: str, expected_version: int = 0) -> common_pb2.Module:
        request = registry_pb2.PublishRequest(module_id=module_id, actor="test", expected_version=expected_version)
        return (await self.stub.Publish(request)).module  # type: ignore[no-any-return]

    async def get(self, module_id: str) -> common_pb2.Module:
        return await self.stub.Get(registry_pb2.GetModuleRequest(module_id=module_id))  # type: ignore[no-any-return]


def message_of(metadata: ModuleMetadata, source_uri: str) -> common_pb2.Module:
    return module_of(ModuleRecord(metadata=metadata, source_uri=source_uri, state=ModuleState.VALIDATING))


@asynccontextmanager
async def serve(core: RegistryCore) -> AsyncIterator[Client]:
    address = f"127.0.0.1:{free_port()}"
    servicer = RegistryServicer(core, poll_interval=0.02)
    server = await build_server(
        [(registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer)], [SERVICE_NAME], address
    )
    await server.start()
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Client(stub=registry_pb2_grpc.RegistryServiceStub(channel), channel=channel)
    finally:
        await channel.close(grace=None)
        await server.stop(grace=None)


@pytest.fixture
async def store(fresh_database: FreshDatabase) -> AsyncIterator[PostgresStore]:
    engine = connect(fresh_database.database_url)
    try:
        yield PostgresStore(session_factory(engine))
    finally:
        await engine.dispose()


@pytest.fixture
async def registry(store: PostgresStore) -> AsyncIterator[Client]:
    async with serve(RegistryCore(store)) as client:
        yield client


async def fails(call: Awaitable[Any], code: grpc.StatusCode, reason: str = "", field: str = "") -> grpc.aio.AioRpcError:
    """The call fails with `code`; when given, its cag-error-bin ErrorInfo has that reason and field."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, error.details()
    if reason or field:
        info = decode_error_info(error.trailing_metadata())
        assert info is not None
        assert (info.reason, info.field) == (reason or info.reason, field or info.field)
    return error


# --- real module files (compiled with the tiny model) ---


def file_metadata(path: Path, **changes: Any) -> ModuleMetadata:
    """The header of a real module file, registered at its path.

    The tiny model fails its golden questions; the registry trusts the registered golden status, so the
    file's module is registered as passed to be publishable (the file's bytes are what publish verifies).
    """
    metadata = ModuleFile.open(path).metadata
    return dataclasses.replace(
        metadata, storage_uri=path.as_uri(), golden_status=GoldenStatus.PASSED, golden_results="[]", **changes
    )


def copy_module(source: Path, directory: Path, name: str) -> Path:
    target = directory / f"{name}.safetensors"
    shutil.copyfile(source, target)
    return target


# --- Register / Get ---


def full_module() -> common_pb2.Module:
    """Every file field set by hand (not through the adapter's own conversion), plus registry fields to ignore."""
    return common_pb2.Module(
        module_id="billing-child", tenant_id="acme", route="billing", model_name="smollm2",
        model_revision="rev-a", tokenizer_revision="tok-1", context_checksum="ctx-1", source_checksum="src-1",
        token_count=42, dtype="bf16", storage_uri="file:///modules/billing-child.safetensors",
        acl_scope=common_pb2.ACL_SCOPE_WORKSPACE, acl_principal="ws-7",
        created_at=Timestamp(seconds=1767225600), expires_at=Timestamp(seconds=1798761600),
        layout_id="support.v1", layout_hash="lh-slots", layout='{"layout_id":"support.v1","slots":["system"]}',
        parent_id="root-1", parent_chain_hash=make_metadata("root-1").chain_hash, chain_hash="chain-child",
        engine_fingerprint="llama;test", golden_status=common_pb2.GOLDEN_STATUS_PASSED,
        golden_results=[
            common_pb2.GoldenResult(question="Refunds?", expect=["30 days", "receipt"], answer="30 days, receipt",
                                    passed=True),
            common_pb2.GoldenResult(question="Fees?", expect=["none"], answer="none", passed=True),
        ],
        tensor_checksum="ab" * 32, format_version="cag-kv/1", source_uri="git://kb/acme/billing",
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
    other = make_metadata("m-1", tensor_checksum="ff" * 32)
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
    orphan = make_metadata("child", parent_id="nope", parent_chain_hash="x")
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
    assert (await registry.get("m-1")).state == common_pb2.MODULE_STATE_VALIDATING


async def test_publish_quarantines_a_module_whose_file_does_not_verify(
    registry: Client, tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = tiny_chain
    damaged = copy_module(root, tmp_path, "damaged")
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to the tensor data
    damaged.write_bytes(bytes(data))
    await registry.register(file_metadata(damaged, module_id="damaged"))
    error = await fails(registry.publish("damaged"), Code.FAILED_PRECONDITION, reason="PUBLISH_REFUSED")
    assert "checksum" in (error.details() or "")
    got = await registry.get("damaged")
    assert got.state == common_pb2.MODULE_STATE_QUARANTINED
    assert "checksum" in got.state_reason
    await fails(registry.publish("damaged"), Code.FAILED_PRECONDITION)


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
    registry: Client, tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = tiny_chain
    for name in ("first", "second"):
        await registry.register(file_metadata(copy_module(root, tmp_path, name), module_id=name))
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


async def test_rollback_points_the_route_at_an_earlier_version(
    registry: Client, tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = tiny_chain
    for name in ("v-one", "v-two"):
        await registry.register(file_metadata(copy_module(root, tmp_path, name), module_id=name, route="faq"))
        await registry.publish(name)
    request = registry_pb2.ResolveRouteRequest(tenant_id="acme", route="faq")
    assert (await registry.stub.ResolveRoute(request)).route_version == 2
    rollback = registry_pb2.RollbackRequest(tenant_id="acme", route="faq", to_version=1, reason="bad answers")
    back = (await registry.stub.Rollback(rollback)).module
    assert (back.module_id, back.version) == ("v-one", 1)
    resolved = await registry.stub.ResolveRoute(request)
    assert (resolved.route_version, resolved.chain[-1].module_id) == (1, "v-one")
    too_low = registry_pb2.RollbackRequest(tenant_id="acme", route="faq", to_version=0)
    await fails(registry.stub.Rollback(too_low), Code.INVALID_ARGUMENT)


# --- Invalidate ---


async def test_invalidate_each_trigger_kind_returns_the_affected_modules(registry: Client) -> None:
    modules = [
        (make_metadata("m-src", source_checksum="old"), "git://kb/acme/faq"),
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
    again = await registry.stub.Invalidate(cases[1][0])
    assert list(again.module_ids) == []


async def test_invalidate_refuses_malformed_triggers(registry: Client) -> None:
    pb = registry_pb2
    public = pb.InvalidateRequest(acl=common_pb2.Acl(scope=common_pb2.ACL_SCOPE_PUBLIC, tenant_id="public"))
    await fails(registry.stub.Invalidate(public), Code.INVALID_ARGUMENT, reason="INVALID_INPUT")
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
    registry: Client, tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = tiny_chain
    await registry.register(file_metadata(copy_module(root, tmp_path, "w-one"), module_id="w-one"))
    await registry.register(file_metadata(copy_module(root, tmp_path, "w-two"), module_id="w-two"))
    await registry.publish("w-one")

    history = registry.stub.Watch(registry_pb2.WatchRequest(since_sequence=0))
    first = await read(history)
    history.cancel()
    assert (first.module_id, first.state, first.version) == ("w-one", common_pb2.MODULE_STATE_PUBLISHED, 1)
    assert first.subject == "cag.module.published" and first.HasField("occurred_at")
    assert first.event_id and first.reason == "published"

    live = registry.stub.Watch(registry_pb2.WatchRequest(since_sequence=first.sequence, tenant_id="acme"))
    pending = asyncio.ensure_future(read(live))
    await asyncio.sleep(0.1)  # the stream is polling an empty feed now
    assert not pending.done()
    await registry.publish("w-two")
    second = await pending
    assert (second.module_id, second.version) == ("w-two", 2)
    assert second.sequence > first.sequence
    assert live.cancel()
    assert await live.code() == Code.CANCELLED

    negative = registry.stub.Watch(registry_pb2.WatchRequest(since_sequence=-1))
    await fails(negative.read(), Code.INVALID_ARGUMENT)


# --- unexpected errors, health, reflection ---


class BrokenCore(RegistryCore):
    """A core whose change feed fails like a bug would (details must not reach the client)."""

    async def changes_since(
        self, sequence: int, *, tenant_id: str | None = None, limit: int = 100
    ) -> list[ModuleChange]:
        raise RuntimeError("secret detail")


def broken_verifier(record: ModuleRecord) -> None:
    raise RuntimeError("secret detail")


async def test_unexpected_errors_become_internal_with_a_generic_message(store: PostgresStore) -> None:
    async with serve(BrokenCore(store, verifier=broken_verifier)) as client:
        await client.register(make_metadata("m-1"))
        error = await fails(client.publish("m-1"), Code.INTERNAL, reason="INTERNAL")
        assert error.details() == INTERNAL_MESSAGE
        stream = client.stub.Watch(registry_pb2.WatchRequest())
        error = await fails(stream.read(), Code.INTERNAL, reason="INTERNAL")
        assert "secret" not in (error.details() or "")


async def test_health_is_serving_and_reflection_lists_the_service(registry: Client) -> None:
    health = health_pb2_grpc.HealthStub(registry.channel)
    for service in (SERVICE_NAME, ""):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(registry.channel)
    call = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    response = await call.read()
    names = {s.name for s in response.list_services_response.service}
    assert {"cag.v1.RegistryService", "grpc.health.v1.Health"} <= names
    assert SERVICE_NAME == "cag.v1.RegistryService"
