"""Authentication over real gRPC: build_server(auth=...) around a tiny servicer that reports its caller.

The servicer answers Get with `current_caller().subject` as the module id and Watch with one change per
subject, so these tests need neither the registry's implementation nor a database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from jwt.algorithms import ECAlgorithm
from typing_extensions import override

from cag.auth import ALL_TENANTS, Scope
from cag.auth.caller import SYSTEM
from cag.auth.credentials import bearer_metadata, local_subject
from cag.auth.jwks import parse_jwks
from cag.auth.tokens import KeySet, issue_token, issue_user_token
from cag.cli.registry_client import registry_client
from cag.infra.ports import free_port
from cag.rpc.auth import Auth, authenticated_channel, current_caller
from cag.rpc.clients import RegistryClient
from cag.rpc.errors import error_details
from cag.rpc.server import build_server
from cag.settings import CagSettings, InfraSettings
from cag.v1 import common_pb2, registry_pb2, registry_pb2_grpc

SERVICE = "cag.v1.RegistryService"
KEY = secrets.token_bytes(32)
GET = registry_pb2.GetModuleRequest(module_id="m")


class WhoAmI(registry_pb2_grpc.RegistryServiceServicer):
    """Get and Watch answer with the caller's subject; Watch checks it survives awaits mid-stream."""

    def __init__(self, concurrent_watchers: int = 1) -> None:
        self.watchers = asyncio.Barrier(concurrent_watchers)

    @override
    async def Get(self, request: registry_pb2.GetModuleRequest, context: Any) -> common_pb2.Module:
        return common_pb2.Module(module_id=current_caller().subject)

    @override
    async def Watch(self, request: registry_pb2.WatchRequest, context: Any) -> AsyncIterator[registry_pb2.ModuleChange]:
        yield registry_pb2.ModuleChange(module_id=current_caller().subject, sequence=1)
        await self.watchers.wait()  # every watcher is inside its handler at once
        yield registry_pb2.ModuleChange(module_id=current_caller().subject, sequence=2)


@asynccontextmanager
async def serve(
    auth: Auth | None = KEY, *, reflection: bool = False, servicer: WhoAmI | None = None
) -> AsyncIterator[str]:
    address = f"127.0.0.1:{free_port()}"
    bindings = [(registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer or WhoAmI())]
    server = await build_server(bindings, [SERVICE], address, auth=auth, reflection=reflection)
    await server.start()
    try:
        yield address
    finally:
        await server.stop(grace=None)


@asynccontextmanager
async def stub(address: str) -> AsyncIterator[registry_pb2_grpc.RegistryServiceStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


def token_for(subject: str, key: bytes = KEY, **kw: Any) -> str:
    return issue_token(key, subject, kw.get("scopes", [Scope.READ]), kw.get("tenants", ["acme"]), kw.get("ttl_s", 60))


async def unauthenticated(call: Awaitable[Any]) -> str:
    """The details of a call that must fail UNAUTHENTICATED with an ErrorInfo like every other error."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    error = failure.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    details = error_details(error)
    assert details is not None and details.reason == "UNAUTHENTICATED"
    return error.details() or ""


async def watch_subjects(call: Any) -> list[str]:
    return [change.module_id async for change in call]


async def test_no_token_is_unauthenticated() -> None:
    async with serve() as address, stub(address) as registry:
        details = await unauthenticated(registry.Get(registry_pb2.GetModuleRequest(module_id="m")))
        assert "no credentials" in details and "Bearer" in details
        await unauthenticated(watch_subjects(registry.Watch(registry_pb2.WatchRequest())))


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        ("Bearer not-a-jwt", "malformed"),
        (f"Bearer {token_for('service:x', key=secrets.token_bytes(32))}", "signature does not verify"),
        (f"Basic {token_for('service:x')}", "Bearer <token>"),
        ("Bearer ", "Bearer <token>"),
    ],
)
async def test_bad_credentials_are_unauthenticated(authorization: str, problem: str) -> None:
    metadata = (("authorization", authorization),)
    async with serve() as address, stub(address) as registry:
        details = await unauthenticated(registry.Get(registry_pb2.GetModuleRequest(), metadata=metadata))
        assert problem in details
        streamed = await unauthenticated(watch_subjects(registry.Watch(registry_pb2.WatchRequest(), metadata=metadata)))
        assert problem in streamed


async def test_expired_token_is_unauthenticated() -> None:
    expired = issue_token(KEY, "service:x", ["read"], ["acme"], 60, now=0)
    async with serve() as address, stub(address) as registry:
        details = await unauthenticated(
            registry.Get(registry_pb2.GetModuleRequest(), metadata=bearer_metadata(expired))
        )
        assert "expired" in details


async def test_caller_reaches_unary_and_streaming_handlers() -> None:
    metadata = bearer_metadata(token_for("service:router"))
    async with serve() as address, stub(address) as registry:
        module = await registry.Get(registry_pb2.GetModuleRequest(module_id="m"), metadata=metadata)
        assert module.module_id == "service:router"
        assert await watch_subjects(registry.Watch(registry_pb2.WatchRequest(), metadata=metadata)) == [
            "service:router",
            "service:router",
        ]


async def test_concurrent_streams_each_see_their_own_caller() -> None:
    subjects = [f"service:watcher-{i}" for i in range(3)]
    async with serve(servicer=WhoAmI(concurrent_watchers=len(subjects))) as address, stub(address) as registry:
        calls = [registry.Watch(registry_pb2.WatchRequest(), metadata=bearer_metadata(token_for(s))) for s in subjects]
        seen = await asyncio.gather(*(watch_subjects(call) for call in calls))
    assert seen == [[s, s] for s in subjects]


async def test_authenticated_channel_sends_the_token_on_every_kind_of_call() -> None:
    token = token_for("user:ops", scopes=["admin"], tenants=[ALL_TENANTS])
    async with serve() as address, authenticated_channel(address, token) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        assert (await registry.Get(registry_pb2.GetModuleRequest())).module_id == "user:ops"
        assert await watch_subjects(registry.Watch(registry_pb2.WatchRequest())) == ["user:ops", "user:ops"]


async def test_health_needs_no_credentials() -> None:
    async with serve() as address, grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def list_services(channel: grpc.aio.Channel, metadata: Any = None) -> set[str]:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in reflection.ServerReflectionInfo(iter([request]), metadata=metadata)]
    return {s.name for r in responses for s in r.list_services_response.service}


async def test_reflection_is_off_unless_enabled() -> None:
    metadata = bearer_metadata(token_for("user:ops"))
    async with serve() as address, grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await list_services(channel, metadata)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    async with serve(reflection=True) as address, grpc.aio.insecure_channel(address) as channel:
        assert SERVICE in await list_services(channel, metadata)
        await unauthenticated(list_services(channel))  # enabled, it still wants credentials


async def test_without_auth_current_caller_fails_closed() -> None:
    async with serve(auth=None) as address, stub(address) as registry:
        details = await unauthenticated(registry.Get(registry_pb2.GetModuleRequest()))
        assert "no authenticated caller" in details


async def test_a_fixed_caller_serves_calls_without_credentials() -> None:
    async with serve(auth=SYSTEM) as address, stub(address) as registry:
        assert (await registry.Get(registry_pb2.GetModuleRequest())).module_id == SYSTEM.subject


async def test_registry_client_presents_the_commands_credentials(tmp_path: Path) -> None:
    key_file = tmp_path / "auth.key"
    key_file.write_text(KEY.hex())
    key_file.chmod(0o600)
    async with serve() as address:
        given = registry_client(
            CagSettings(token=token_for("service:ci"), infra=InfraSettings(auth_key_file=key_file)), address
        )
        minted = registry_client(CagSettings(token=None, infra=InfraSettings(auth_key_file=key_file)), address)
        anonymous = RegistryClient(address)
        with given, minted, anonymous:
            assert (await asyncio.to_thread(given.get, "m")).module_id == "service:ci"
            assert (await asyncio.to_thread(minted.get, "m")).module_id == local_subject()
            with pytest.raises(grpc.RpcError) as failure:
                await asyncio.to_thread(anonymous.get, "m")
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


async def test_a_key_set_serves_platform_and_jwks_tokens_and_refuses_confusion() -> None:
    """build_server(auth=KeySet(...)): the platform's HS256 user tokens and an outside issuer's ES256 ones both
    authenticate, with the end user's workspace and user; HS256 signed over the public key does not."""
    idp = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(idp.public_key())) | {"kid": "idp-1"}
    keys = KeySet(platform_key=KEY, jwks=parse_jwks(json.dumps({"keys": [jwk]}), "idp.jwks"))
    now = int(time.time())
    claims = {"sub": "user:carol", "scopes": ["read"], "tenants": ["acme"], "user": "carol", "workspace": "ops",
              "iat": now, "exp": now + 60, "aud": "cag", "iss": "cag"}  # fmt: skip
    from_idp = jwt.encode(claims, idp, algorithm="ES256", headers={"kid": "idp-1"})
    public_pem = idp.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to HMAC with a PEM key, so the forgery is signed by hand.
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in ({"alg": "HS256", "kid": "idp-1"}, claims | {"scopes": ["admin"]})
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    async with serve(auth=keys) as address, stub(address) as registry:
        user_token = issue_user_token(KEY, "acme", 60, user="alice")
        assert (await registry.Get(GET, metadata=bearer_metadata(user_token))).module_id == "user:alice"
        assert (await registry.Get(GET, metadata=bearer_metadata(from_idp))).module_id == "user:carol"
        assert "signature does not verify" in await unauthenticated(registry.Get(GET, metadata=bearer_metadata(forged)))
