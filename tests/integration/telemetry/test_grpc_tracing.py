"""One trace across a gRPC hop: a real registry server (build_server) called through the platform's clients,
asynchronous and blocking. The caller's span, the client span and the registry's server span share one trace
id and nest in that order; the server counts each call by the status the caller got."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cag.auth import ALL_TENANTS, Scope
from cag.registry.core import RegistryCore
from cag.registry.core.memory import MemoryStore
from cag.rpc.clients import AsyncRegistryClient, RegistryClient
from cag.telemetry import configure_tracing, current_trace_id, span
from cag.telemetry.metrics import REGISTRY
from cag.v1 import registry_pb2
from tests.registry_population import make_metadata
from tests.registry_server import RegistryServer, serve_registry

GET = "/cag.v1.RegistryService/Get"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    configure_tracing("cag-tests", exporter=exporter)
    return exporter


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    async with serve_registry(RegistryCore(MemoryStore())) as running:
        yield running


def reader_token(registry: RegistryServer) -> str:
    return registry.token("service:test-reader", [Scope.READ], [ALL_TENANTS])


async def trace_of(spans: InMemorySpanExporter, trace_id: str) -> dict[str, ReadableSpan]:
    """The three finished spans of one trace, by kind (the caller's own span under "INTERNAL"). The server
    span ends after the status left for the client, so it may still be open when the call returns: wait."""
    for _ in range(100):
        mine = [s for s in spans.get_finished_spans() if s.context and f"{s.context.trace_id:032x}" == trace_id]
        if len(mine) >= 3:
            break
        await asyncio.sleep(0.02)
    by_kind = {s.kind.name: s for s in mine}
    assert len(by_kind) == len(mine) == 3, [(s.name, s.kind.name) for s in mine]
    return by_kind


def assert_nested(spans: dict[str, ReadableSpan]) -> None:
    """caller → client span → server span, each the parent of the next."""
    caller, client, server = spans["INTERNAL"], spans["CLIENT"], spans["SERVER"]
    assert caller.parent is None
    assert client.parent is not None and caller.context is not None
    assert client.parent.span_id == caller.context.span_id
    assert server.parent is not None and client.context is not None
    assert server.parent.span_id == client.context.span_id
    assert server.parent.is_remote  # it came over the wire, in the call's metadata
    assert server.name == GET and server.kind is SpanKind.SERVER


def requests_counted(code: str, method: str = "Get") -> float:
    labels = {"service": "cag.v1.RegistryService", "method": method, "code": code}
    return REGISTRY.get_sample_value("cag_requests_total", labels) or 0.0


async def test_an_async_client_call_and_the_server_share_one_trace(
    registry: RegistryServer, spans: InMemorySpanExporter
) -> None:
    not_found_before = requests_counted("NOT_FOUND")
    async with AsyncRegistryClient(registry.address, token=reader_token(registry)) as client:
        with span("caller", purpose="test"):
            trace_id = current_trace_id()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.get("no-such-module")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert_nested(await trace_of(spans, trace_id))
    assert requests_counted("NOT_FOUND") == not_found_before + 1


async def test_a_blocking_client_call_and_the_server_share_one_trace(
    registry: RegistryServer, spans: InMemorySpanExporter
) -> None:
    def ask() -> str:  # on a thread: the server answers on this test's event loop
        with RegistryClient(registry.address, token=reader_token(registry)) as client, span("caller"):
            with pytest.raises(grpc.RpcError):
                client.get("no-such-module")
            return current_trace_id()

    trace_id = await asyncio.to_thread(ask)
    assert_nested(await trace_of(spans, trace_id))


async def test_a_refused_call_is_traced_and_counted_by_its_status(
    registry: RegistryServer, spans: InMemorySpanExporter
) -> None:
    before = requests_counted("UNAUTHENTICATED")
    async with AsyncRegistryClient(registry.address, token="not-a-token") as client:
        with span("caller"):
            trace_id = current_trace_id()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.get("no-such-module")
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert_nested(await trace_of(spans, trace_id))
    assert requests_counted("UNAUTHENTICATED") == before + 1


async def test_an_answered_call_is_counted_ok(registry: RegistryServer) -> None:
    before = requests_counted("OK", method="List")
    async with AsyncRegistryClient(registry.address, token=reader_token(registry)) as client:
        assert [m async for m in client.list_all(registry_pb2.ListModulesRequest())] == []
    assert requests_counted("OK", method="List") == before + 1


async def test_a_stream_the_client_cancels_is_counted_cancelled(registry: RegistryServer) -> None:
    before = requests_counted("CANCELLED", method="Watch")
    admin = registry.admin()
    await admin.register(make_metadata("m-watched"))
    await admin.publish("m-watched")  # a change on the feed, so the stream answers once
    async with AsyncRegistryClient(registry.address, token=reader_token(registry)) as client:
        changes = client.watch()
        await asyncio.wait_for(anext(changes), 5)  # the server's stream is running
        await changes.aclose()  # the client stops listening: the call is cancelled
    for _ in range(100):  # the server learns of the cancellation after the client let go
        if requests_counted("CANCELLED", method="Watch") == before + 1:
            break
        await asyncio.sleep(0.02)
    assert requests_counted("CANCELLED", method="Watch") == before + 1
