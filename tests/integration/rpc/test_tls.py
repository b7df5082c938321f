"""gRPC over TLS, real servers and channels: build_server(tls=...) and the platform's client channels (asyncio and
blocking), certificates from a throwaway CA (tests.support.pki)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typing_extensions import override

from cag.auth import Scope
from cag.auth.tokens import issue_token
from cag.infra.ports import free_port
from cag.rpc import reloading_channel
from cag.rpc.auth import current_caller
from cag.rpc.clients import AsyncRegistryClient, RegistryClient
from cag.rpc.server import build_server
from cag.rpc.tls import ClientTls, ServerTls
from cag.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tests.support.pki import SERVER_NAME, Pki, make_pki

SERVICE = "cag.v1.RegistryService"
KEY = secrets.token_bytes(32)


def token() -> str:
    """Minted when a call is made (a token minted at import expires before a long test run reaches it)."""
    return issue_token(KEY, "service:caller", [Scope.READ], ["acme"], 60)


class WhoAmI(registry_pb2_grpc.RegistryServiceServicer):
    """Get answers with the caller's subject (module_id) and the fingerprint of the certificate it presented
    (source_uri; "" for none)."""

    @override
    async def Get(self, request: registry_pb2.GetModuleRequest, context: Any) -> common_pb2.Module:
        [presented] = context.auth_context().get("x509_pem_cert", [b""])
        return common_pb2.Module(module_id=current_caller().subject, source_uri=fingerprint(presented))


def fingerprint(pem: bytes) -> str:
    return hashlib.sha256(pem).hexdigest() if pem else ""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA's certificates: valid, but not the platform's."""
    return make_pki(tmp_path_factory.mktemp("stranger"))


def server_tls(pki: Pki, *, mutual: bool = True) -> ServerTls:
    return ServerTls(pki.server_cert_file, pki.server_key_file, pki.ca_file if mutual else None)


def client_tls(pki: Pki, *, certificate_of: Pki | None = None, server_name: str | None = SERVER_NAME) -> ClientTls:
    """Trusting `pki`'s CA, presenting the client certificate of `certificate_of` (None: none)."""
    holder = certificate_of
    return ClientTls.from_files(
        pki.ca_file,
        None if holder is None else holder.client_cert_file,
        None if holder is None else holder.client_key_file,
        server_name=server_name,
    )


@asynccontextmanager
async def serve(tls: ServerTls | None, *, health: bool = False) -> AsyncIterator[tuple[str, str]]:
    """(the service's address, its health-only address or "")."""
    address = f"127.0.0.1:{free_port()}"
    health_address = f"127.0.0.1:{free_port()}" if health else None
    bindings = [(registry_pb2_grpc.add_RegistryServiceServicer_to_server, WhoAmI())]  # type: ignore[abstract]
    server = await build_server(bindings, [SERVICE], address, auth=KEY, tls=tls, health_address=health_address)
    await server.start()
    try:
        yield address, health_address or ""
    finally:
        await server.stop(grace=None)


async def who(address: str, tls: ClientTls | None) -> str:
    """The subject the server saw, over the platform's asyncio channel."""
    async with AsyncRegistryClient(address, token=token(), tls=tls, timeout_s=5.0) as client:
        return (await client.get("m")).module_id


async def refused(address: str, tls: ClientTls | None) -> str:
    """The call fails in the handshake, before any handler: UNAVAILABLE."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await who(address, tls)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, failure.value.details()
    return failure.value.details() or ""


async def test_mutual_tls_serves_a_client_presenting_a_certificate_of_the_platforms_ca(pki: Pki) -> None:
    async with serve(server_tls(pki)) as (address, _):
        assert await who(address, client_tls(pki, certificate_of=pki)) == "service:caller"  # the token still counts


async def test_a_plaintext_client_is_refused_by_a_tls_server(pki: Pki) -> None:
    async with serve(server_tls(pki)) as (address, _):
        await refused(address, None)


async def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_another_cas(pki: Pki, stranger: Pki) -> None:
    async with serve(server_tls(pki)) as (address, _):
        await refused(address, client_tls(pki))
        await refused(address, client_tls(pki, certificate_of=stranger))


async def test_without_client_auth_the_ca_alone_is_enough(pki: Pki) -> None:
    """The router facing callers outside the platform: TLS, no client certificate asked for."""
    async with serve(server_tls(pki, mutual=False)) as (address, _):
        assert await who(address, client_tls(pki)) == "service:caller"


async def test_a_client_refuses_a_server_whose_certificate_another_ca_signed(pki: Pki, stranger: Pki) -> None:
    async with serve(server_tls(stranger, mutual=False)) as (address, _):
        await refused(address, client_tls(pki))


async def test_the_server_name_setting_checks_the_certificate_whatever_address_is_dialled(pki: Pki) -> None:
    """The certificate names cag-internal, not 127.0.0.1 (replicas are dialled by pod IP): only the name override
    makes the address acceptable, and a wrong name is refused."""
    async with serve(server_tls(pki, mutual=False)) as (address, _):
        await refused(address, client_tls(pki, server_name=None))
        await refused(address, client_tls(pki, server_name="somebody-else"))
        assert await who(address, client_tls(pki, server_name=SERVER_NAME)) == "service:caller"


async def test_the_blocking_channel_speaks_tls_too(pki: Pki) -> None:
    """The command line's and the SDK's channel (its calls run in a thread: the server shares this loop)."""
    async with serve(server_tls(pki)) as (address, _):
        with RegistryClient(address, token=token(), tls=client_tls(pki, certificate_of=pki), timeout_s=5.0) as client:
            module = await asyncio.to_thread(client.get, "m")
        assert module.module_id == "service:caller"


async def test_the_health_port_is_plaintext_and_serves_health_alone(pki: Pki) -> None:
    """What kubelet's gRPC probes reach beside a TLS port: SERVING for the service, nothing else there."""
    async with (
        serve(server_tls(pki), health=True) as (_, health_address),
        grpc.aio.insecure_channel(health_address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await registry_pb2_grpc.RegistryServiceStub(channel).Get(
                registry_pb2.GetModuleRequest(module_id="m"),
                timeout=5,
                metadata=(("authorization", f"Bearer {token()}"),),
            )
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_health_port_stops_with_the_service(pki: Pki) -> None:
    async with serve(server_tls(pki), health=True) as (_, health_address):
        pass
    async with grpc.aio.insecure_channel(health_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    """The files the server was started with are replaced, as a renewal swaps a mounted Secret: the next
    connection gets the new certificate (a client trusting only the new CA gets in), the server never stopped."""
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(tmp_path / "old" / name, mounted / name)
    tls = ServerTls(mounted / "server.crt", mounted / "server.key", mounted / "ca.crt")
    async with serve(tls) as (address, _):
        assert await who(address, client_tls(old, certificate_of=old)) == "service:caller"
        await refused(address, client_tls(new, certificate_of=new))
        for name in ("server.crt", "server.key", "ca.crt"):  # written aside, then renamed over: atomic
            shutil.copy(tmp_path / "new" / name, mounted / f".{name}")
            (mounted / f".{name}").replace(mounted / name)
        assert await who(address, client_tls(new, certificate_of=new)) == "service:caller"
        await refused(address, client_tls(old, certificate_of=old))


async def test_unreadable_files_mid_rotation_keep_the_certificate_read_before(pki: Pki, tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    shutil.copytree(pki.ca_file.parent, mounted)
    tls = ServerTls(mounted / "server.crt", mounted / "server.key", mounted / "ca.crt")
    async with serve(tls) as (address, _):
        (mounted / "server.key").write_text("half-written")
        assert await who(address, client_tls(pki, certificate_of=pki)) == "service:caller"


async def test_a_renewed_client_certificate_is_presented_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service's channel built from files (client_tls of its settings) presents the renewed certificate from the
    next call on: the server, trusting both CAs, sees the new one on the same client object."""
    monkeypatch.setattr(reloading_channel, "CHECK_INTERVAL_S", 0.0)  # look at the files at every call
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    both_cas = tmp_path / "cas.crt"
    both_cas.write_bytes(old.ca_file.read_bytes() + new.ca_file.read_bytes())
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    shutil.copy(old.ca_file, mounted / "ca.crt")
    for source, name in ((old.client_cert_file, "tls.crt"), (old.client_key_file, "tls.key")):
        shutil.copy(source, mounted / name)
    tls = ClientTls.from_files(mounted / "ca.crt", mounted / "tls.crt", mounted / "tls.key", server_name=SERVER_NAME)
    async with (
        serve(ServerTls(old.server_cert_file, old.server_key_file, both_cas)) as (address, _),
        AsyncRegistryClient(address, token=token(), tls=tls, timeout_s=5.0) as client,
    ):
        assert (await client.get("m")).source_uri == fingerprint(old.client_cert_file.read_bytes())
        for source, name in ((new.client_cert_file, "tls.crt"), (new.client_key_file, "tls.key")):
            shutil.copy(source, mounted / f".{name}")
            (mounted / f".{name}").replace(mounted / name)
        assert (await client.get("m")).source_uri == fingerprint(new.client_cert_file.read_bytes())
