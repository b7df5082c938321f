"""A real registry gRPC server (build_server with authentication) over a core, and clients holding tokens."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token
from cag.infra.ports import free_port
from cag.metadata import ModuleMetadata
from cag.registry.core import RegistryCore
from cag.registry.servicer import SERVICE_NAME, RegistryServicer
from cag.rpc.errors import error_details
from cag.rpc.modules import module_message
from cag.rpc.server import ServiceServer, build_server
from cag.v1 import common_pb2, registry_pb2, registry_pb2_grpc

TOKEN_TTL_S = 3600.0


def header_of(module_id: str) -> str:
    """A stand-in header checksum for metadata that has no file behind it."""
    return hashlib.sha256(f"header {module_id}".encode()).hexdigest()


def message_of(
    metadata: ModuleMetadata, source_uri: str, header_sha256: str | None = None, storage_uri: str | None = None
) -> common_pb2.Module:
    return module_message(
        metadata,
        source_uri=source_uri,
        storage_uri=storage_uri or f"file:///modules/{metadata.module_id}.safetensors",
        header_sha256=header_sha256 or header_of(metadata.module_id),
    )


@dataclass
class Client:
    """A registry stub on a channel, calling as one identity (its bearer token goes with every call)."""

    stub: Any  # registry_pb2_grpc.RegistryServiceStub on an aio channel, wrapped to send the token
    channel: grpc.aio.Channel

    async def register(
        self,
        metadata: ModuleMetadata,
        source_uri: str = "git://kb/acme/billing",
        header_sha256: str | None = None,
        storage_uri: str | None = None,
    ) -> common_pb2.Module:
        request = registry_pb2.RegisterRequest(module=message_of(metadata, source_uri, header_sha256, storage_uri))
        return (await self.stub.Register(request)).module  # type: ignore[no-any-return]

    async def publish(self, module_id: str, expected_version: int = 0) -> common_pb2.Module:
        request = registry_pb2.PublishRequest(module_id=module_id, expected_version=expected_version)
        return (await self.stub.Publish(request)).module  # type: ignore[no-any-return]

    async def get(self, module_id: str) -> common_pb2.Module:
        return await self.stub.Get(registry_pb2.GetModuleRequest(module_id=module_id))  # type: ignore[no-any-return]


class _AuthorizedStub:
    """Every method of the generated stub, with the caller's metadata added to each call."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._metadata, **kw)


@dataclass
class RegistryServer:
    address: str
    key: bytes
    channel: grpc.aio.Channel
    server: ServiceServer

    def token(self, subject: str, scopes: Iterable[Scope], tenants: Iterable[str]) -> str:
        return issue_token(self.key, subject, scopes, tenants, TOKEN_TTL_S)

    def client(self, token: str | None) -> Client:
        """A client calling with `token` (None: no credentials at all)."""
        raw = registry_pb2_grpc.RegistryServiceStub(self.channel)
        metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        return Client(stub=_AuthorizedStub(raw, metadata), channel=self.channel)

    def caller(self, subject: str, scopes: Iterable[Scope], tenants: Iterable[str]) -> Client:
        return self.client(self.token(subject, scopes, tenants))

    def admin(self) -> Client:
        return self.caller("service:test-admin", [Scope.ADMIN], [ALL_TENANTS])


@asynccontextmanager
async def serve_registry(
    core: RegistryCore, *, reflection: bool = True, address: str | None = None, key: bytes | None = None
) -> AsyncIterator[RegistryServer]:
    """A registry server on `address` (default: a free loopback port) verifying tokens signed with `key`."""
    address = address or f"127.0.0.1:{free_port()}"
    key = key or secrets.token_bytes(32)
    servicer = RegistryServicer(core, poll_interval=0.02)
    server = await build_server(
        [(registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer)],
        [SERVICE_NAME],
        address,
        auth=key,
        reflection=reflection,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(address)
    try:
        yield RegistryServer(address=address, key=key, channel=channel, server=server)
    finally:
        await channel.close(grace=None)
        await server.stop(grace=None)


async def fails(call: Awaitable[Any], code: grpc.StatusCode, reason: str = "", field: str = "") -> grpc.aio.AioRpcError:
    """The call fails with `code`; when given, its google.rpc.ErrorInfo has that reason and field."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, error.details()
    if reason or field:
        details = error_details(error)
        assert details is not None, error.details()
        assert (details.reason, details.field) == (reason or details.reason, field or details.field), error.details()
    return error


def wait_until_serving(address: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Poll a server process's health service until it answers SERVING, or fail as soon as the process exits."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the server exited with {process.returncode}"
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)  # not listening yet
    raise AssertionError(f"the server at {address} did not start serving within {timeout_s:.0f} s")
