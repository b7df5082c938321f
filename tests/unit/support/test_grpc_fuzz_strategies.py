"""The gRPC fuzzing harness itself (tests/support/grpc_fuzz.py): its strategies reach the edge values they
promise, for every service in cag.v1, and its invariants catch what they are meant to catch (a small
in-process server that misbehaves on purpose)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from cag.errors import InvalidFieldError, InvalidInputError, UnauthenticatedError
from cag.infra.ports import free_port
from cag.rpc.server import build_server
from cag.v1 import cachepool_pb2, common_pb2, compiler_pb2, fallback_pb2, registry_pb2, registry_pb2_grpc, router_pb2
from tests.support.grpc_fuzz import (
    DetailsTooLong,
    ForbiddenStatus,
    FuzzCase,
    FuzzSession,
    GrpcFuzzer,
    InvalidArgumentWithoutField,
    StrategyBuilder,
    WroteOnError,
    fuzz_cases,
    summarize,
    timestamps,
)

SERVICES: list[ServiceDescriptor] = [
    service
    for module in (registry_pb2, router_pb2, cachepool_pb2, compiler_pb2, fallback_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
]
ALL_CASES = st.one_of([strategy for service in SERVICES for strategy in fuzz_cases(service).values()])
REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
SEED_MODULE = common_pb2.Module(
    module_id="m-1", tenant_id="acme", route="billing", model_name="smollm2", token_count=10,
    acl_scope=common_pb2.ACL_SCOPE_TENANT, golden_results=[common_pb2.GoldenResult(question="q", expect=["a"])],
)  # fmt: skip
CASES = fuzz_cases(REGISTRY, {"Register": [registry_pb2.RegisterRequest(module=SEED_MODULE)]})
# Searches stop at the first example found (no shrinking): they only show the value is reachable.
FIND = settings(max_examples=3_000, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@settings(max_examples=150, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=ALL_CASES)
def test_every_method_of_every_service_gets_requests_that_serialize(case: FuzzCase) -> None:
    data = case.request.SerializeToString(deterministic=True)
    again = type(case.request).FromString(data).SerializeToString(deterministic=True)
    assert again == data


def _register(predicate: Any) -> Any:
    return find(
        CASES["Register"], lambda c: c.request.HasField("module") and predicate(c.request.module), settings=FIND
    )


def test_strings_reach_nul_huge_and_non_ascii() -> None:
    find(CASES["Get"], lambda c: "\x00" in c.request.module_id, settings=FIND)
    find(CASES["Get"], lambda c: len(c.request.module_id) >= 1_000_000, settings=FIND)
    find(CASES["Get"], lambda c: any(ord(ch) > 0x7F for ch in c.request.module_id), settings=FIND)
    find(CASES["Get"], lambda c: c.request.module_id == "", settings=FIND)


def test_integers_reach_their_extremes() -> None:
    _register(lambda m: m.token_count >= 2**62)
    _register(lambda m: m.token_count < 0)
    find(CASES["List"], lambda c: c.request.page_size < 0, settings=FIND)
    find(CASES["Rollback"], lambda c: c.request.to_version == -(2**63), settings=FIND)


def test_open_enums_get_unknown_numbers() -> None:
    known = set(common_pb2.AclScope.values())
    _register(lambda m: m.acl_scope not in known)


def test_timestamps_go_out_of_range_and_stay_ordinary() -> None:
    find(timestamps(), lambda t: t.seconds > 253_402_300_799, settings=FIND)
    find(timestamps(), lambda t: t.seconds < -62_135_596_800, settings=FIND)
    find(timestamps(), lambda t: not 0 <= t.nanos < 1_000_000_000, settings=FIND)
    find(timestamps(), lambda t: 0 < t.seconds < 4_102_444_800 and 0 <= t.nanos < 1_000_000_000, settings=FIND)
    # and they reach a request's nested Timestamp fields, set or missing
    _register(lambda m: m.HasField("created_at") and not 0 <= m.created_at.seconds <= 253_402_300_799)
    _register(lambda m: not m.HasField("created_at"))


def test_oneofs_take_each_branch_or_none() -> None:
    find(CASES["Invalidate"], lambda c: c.request.WhichOneof("trigger") is None, settings=FIND)
    for branch in ("source", "model", "tokenizer", "acl", "layout", "module"):
        find(CASES["Invalidate"], partial(_is_branch, branch), settings=FIND)


def _is_branch(branch: str, case: FuzzCase) -> bool:
    return bool(case.request.WhichOneof("trigger") == branch)


def test_repeated_fields_are_empty_short_or_long() -> None:
    _register(lambda m: len(m.golden_results) == 0)
    _register(lambda m: 1 <= len(m.golden_results) <= 4)
    _register(lambda m: len(m.golden_results) >= 33)


def test_mutated_seeds_keep_most_of_the_seed() -> None:
    builder = StrategyBuilder([SEED_MODULE])

    @settings(max_examples=100, database=None, suppress_health_check=list(HealthCheck))
    @given(module=builder.mutations(SEED_MODULE))
    def few_fields_change(module: Message) -> None:
        changed = [
            f for f in common_pb2.Module.DESCRIPTOR.fields if getattr(module, f.name) != getattr(SEED_MODULE, f.name)
        ]
        assert len(changed) <= builder.profile.max_mutations

    few_fields_change()
    # Plausible values are offered: a mutation often leaves the tenant as seeded, yet sometimes bends it.
    find(
        builder.mutations(SEED_MODULE),
        lambda m: m.tenant_id.startswith("acme") and m.tenant_id != "acme",
        settings=FIND,
    )


def test_summaries_are_short() -> None:
    request = registry_pb2.GetModuleRequest(module_id="a" * 1_000_000)
    assert summarize(request) == "GetModuleRequest(module_id='a' * 1,000,000)"
    module = common_pb2.Module(acl_scope=12345, module_id="x" * 70 + "y")  # type: ignore[arg-type]
    assert "12345 (unknown AclScope)" in summarize(module) and len(summarize(module)) < 200
    assert len(repr(FuzzCase("Get", request))) < 100


# --- the invariants, against a server that misbehaves on purpose ---


class Misbehaving(registry_pb2_grpc.RegistryServiceServicer):  # only Get and Watch; the rest UNIMPLEMENTED
    def __init__(self) -> None:
        self.writes = 0

    async def Get(  # noqa: N802  (the generated method names)
        self, request: registry_pb2.GetModuleRequest, context: Any
    ) -> common_pb2.Module:
        module_id = request.module_id
        if "\x00" in module_id:
            raise RuntimeError("a bug")  # the error interceptor answers INTERNAL
        if module_id.startswith("echo"):
            raise InvalidFieldError("module_id", f"{module_id} is bad")  # echoes the value (cut at MAX_MESSAGE_CHARS)
        if module_id.startswith("raw-echo"):  # aborts by itself, as a server without the error interceptor would
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{module_id} is bad")
        if module_id == "no-field":
            raise InvalidInputError("something is wrong")
        if module_id == "write":
            self.writes += 1
            raise InvalidFieldError("module_id", "refused after writing")
        if module_id == "auth" and ("authorization", "Bearer good") not in tuple(context.invocation_metadata()):
            raise UnauthenticatedError("who are you")
        return common_pb2.Module(module_id=module_id)

    async def Watch(  # noqa: N802
        self, request: registry_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[registry_pb2.ModuleChange]:
        if request.since_sequence < 0:
            raise InvalidFieldError("since_sequence", "must be >= 0")
        yield registry_pb2.ModuleChange(sequence=1)
        await asyncio.sleep(3600)


@pytest.fixture
async def misbehaving() -> AsyncIterator[tuple[FuzzSession, Misbehaving]]:
    address = f"127.0.0.1:{free_port()}"
    servicer = Misbehaving()  # type: ignore[abstract]
    server = await build_server([(registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer)], [], address)
    await server.start()
    channel = grpc.aio.insecure_channel(address)

    async def snapshot() -> dict[str, int]:
        return {"writes": servicer.writes}

    try:
        fuzzer = GrpcFuzzer(REGISTRY, channel, metadata=(("authorization", "Bearer good"),), stream_window_s=0.2)
        yield FuzzSession(fuzzer, snapshot=snapshot), servicer
    finally:
        await channel.close(grace=None)
        await server.stop(grace=None)


def get(module_id: str, metadata: tuple[tuple[str, str], ...] | None = None) -> FuzzCase:
    return FuzzCase("Get", registry_pb2.GetModuleRequest(module_id=module_id), metadata)


async def test_internal_is_caught_with_the_server_log(misbehaving: tuple[FuzzSession, Misbehaving]) -> None:
    session, _ = misbehaving
    assert (await session.exercise(get("fine"))).ok
    with pytest.raises(ForbiddenStatus, match="INTERNAL") as caught:
        await session.exercise(get("a\x00b"))
    assert "RuntimeError: a bug" in str(caught.value)


async def test_echoed_values_and_nameless_errors_are_caught(misbehaving: tuple[FuzzSession, Misbehaving]) -> None:
    session, _ = misbehaving
    await session.exercise(get("echo" + "x" * 500))  # within the bound
    # The error interceptor cuts a message at MAX_MESSAGE_CHARS (2,048; "…" is 3 bytes): still too long.
    with pytest.raises(DetailsTooLong, match="status details are 2,050 bytes"):
        await session.exercise(get("echo" + "x" * 8_000))
    # gRPC itself replaces a status whose details outgrow its metadata limits with RESOURCE_EXHAUSTED
    with pytest.raises(DetailsTooLong, match="RESOURCE_EXHAUSTED for a 1,000,0"):
        await session.exercise(get("raw-echo" + "x" * 1_000_000))
    with pytest.raises(InvalidArgumentWithoutField):
        await session.exercise(get("no-field"))


async def test_a_failed_call_that_wrote_is_caught(misbehaving: tuple[FuzzSession, Misbehaving]) -> None:
    session, _ = misbehaving
    with pytest.raises(WroteOnError, match="writes: 0 -> 1"):
        await session.exercise(get("write"))


async def test_metadata_goes_with_every_call_unless_the_case_brings_its_own(
    misbehaving: tuple[FuzzSession, Misbehaving],
) -> None:
    session, _ = misbehaving
    assert (await session.exercise(get("auth"))).ok
    outcome = await session.exercise(get("auth", metadata=()))
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED and outcome.error_info is not None


async def test_streams_are_read_briefly_then_cancelled(misbehaving: tuple[FuzzSession, Misbehaving]) -> None:
    session, _ = misbehaving
    outcome = await session.exercise(FuzzCase("Watch", registry_pb2.WatchRequest()))
    assert outcome.ok and outcome.still_open and outcome.responses == 1
    refused = await session.exercise(FuzzCase("Watch", registry_pb2.WatchRequest(since_sequence=-1)))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.error_info is not None and refused.error_info.field == "since_sequence"
    await session.assert_serving()
