"""The request path over TLS, as the chart deploys it: the registry, the cache pool and the router each listen with
the platform's certificate; the router dials the registry and the pool presenting it (mutual TLS) and asks its
own callers for none; probes reach a plaintext health-only port. Real registry app (Postgres, NATS), real router
app, both configured through their settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cag.auth import ALL_TENANTS, Scope
from cag.infra.ports import free_port
from cag.router.servicer import SERVICE_NAME as ROUTER_SERVICE
from cag.rpc.clients import AsyncRegistryClient, AsyncRouterClient
from cag.rpc.tls import ClientTls
from cag.v1 import router_pb2
from tests.integration.router.conftest import Stack
from tests.support.pki import SERVER_NAME, Pki, make_pki


@pytest.fixture
def platform_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def router_overrides() -> dict[str, Any]:
    return {"health_address": f"127.0.0.1:{free_port()}"}


async def test_a_request_crosses_every_hop_over_tls(stack: Stack) -> None:
    """The router caught up with the registry over mutual TLS before it listened (its start waits for that), then
    the answer comes from the pool over mutual TLS, to a caller that dialled the router with the CA alone."""
    received, error = await stack.generate("Where is my invoice?")
    assert error is None
    assert "".join(r.token.text for r in received[1:-1]) == "Refunds take 5 days."
    [(caller, _)] = stack.pool.requests
    assert caller.subject == "service:router"


async def test_plaintext_callers_are_refused_by_the_router_and_the_registry(stack: Stack) -> None:
    async with AsyncRouterClient(stack.router_address, token=stack.token(user="alice")) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await plaintext.explain(router_pb2.GenerateRequest(query="Where is my invoice?"))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    admin = stack.registry.token("service:test-admin", [Scope.ADMIN], [ALL_TENANTS])
    async with AsyncRegistryClient(stack.registry.address, token=admin, timeout_s=5.0) as plaintext_registry:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await plaintext_registry.get("acme-billing")
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_registry_asks_every_caller_for_a_platform_certificate(stack: Stack, platform_pki: Pki) -> None:
    """The CA alone (enough towards the router) does not get a caller into the registry."""
    admin = stack.registry.token("service:test-admin", [Scope.ADMIN], [ALL_TENANTS])
    ca_only = ClientTls.from_files(platform_pki.ca_file, server_name=SERVER_NAME)
    async with AsyncRegistryClient(stack.registry.address, token=admin, tls=ca_only, timeout_s=5.0) as registry:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await registry.get("acme-billing")
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    with_certificate = ClientTls.from_files(
        platform_pki.ca_file, platform_pki.client_cert_file, platform_pki.client_key_file, server_name=SERVER_NAME
    )
    async with AsyncRegistryClient(stack.registry.address, token=admin, tls=with_certificate) as registry:
        assert (await registry.get("acme-billing")).module_id == "acme-billing"


async def test_probes_reach_the_routers_plaintext_health_port(stack: Stack, router_overrides: dict[str, Any]) -> None:
    async with grpc.aio.insecure_channel(router_overrides["health_address"]) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
