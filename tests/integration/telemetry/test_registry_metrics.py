"""The registry app serves its Prometheus metrics when a port is configured (real Postgres and NATS)."""

from __future__ import annotations

import asyncio
import urllib.error

import grpc
import pytest

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key
from cag.infra.ports import free_ports
from cag.registry.app import RegistryApp
from cag.registry.settings import RegistrySettings
from cag.rpc.clients import AsyncRegistryClient
from cag.settings import InfraSettings
from tests.infra_fixtures import FreshDatabase, Infra
from tests.support.metrics import scrape


async def test_the_registry_serves_its_request_counts_on_the_metrics_host_and_port(
    infra: Infra, fresh_database: FreshDatabase
) -> None:
    shared = InfraSettings(
        database_url=fresh_database.database_url, nats_url=infra.nats_url, auth_key_file=infra.auth_key_file
    )
    grpc_port, metrics_port = free_ports(2)  # distinct: the same port on 127.0.0.1 would answer the refusal check
    address = f"127.0.0.1:{grpc_port}"
    # Another loopback address than the default one: the endpoint listens where the setting says, and only there.
    settings = RegistrySettings(
        infra=shared, address=address, metrics_port=metrics_port, metrics_host="127.0.0.2", shutdown_grace_s=0
    )
    app = RegistryApp(settings)
    await app.start()
    try:
        token = issue_token(load_key(infra.auth_key_file), "service:test-reader", [Scope.READ], [ALL_TENANTS], 600)
        async with AsyncRegistryClient(address, token=token) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.get("no-such-module")
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        text = await asyncio.to_thread(scrape, metrics_port, "127.0.0.2")
        with pytest.raises(urllib.error.URLError, match="Connection refused"):  # nothing on the default host
            await asyncio.to_thread(scrape, metrics_port, "127.0.0.1")
    finally:
        await app.stop()
    assert 'cag_requests_total{code="NOT_FOUND",method="Get",service="cag.v1.RegistryService"}' in text
