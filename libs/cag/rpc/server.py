"""One way to build a service's gRPC server: its servicers plus health, optional reflection, the error and
authentication interceptors, TLS when configured, and beside a TLS port a plaintext one that serves health alone
(kubelet's gRPC probes speak no TLS)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection

from cag.rpc.auth import Auth, AuthInterceptor
from cag.rpc.errors import ErrorInterceptor
from cag.rpc.tls import ServerTls
from cag.telemetry import server_interceptor
from cag.telemetry.requests import RequestCounter

# (generated add_XServicer_to_server, servicer instance)
ServicerBinding = tuple[Callable[[Any, grpc.aio.Server], None], object]


async def build_server(
    servicers: Iterable[ServicerBinding],
    service_names: Sequence[str],
    address: str,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    auth: Auth | None = None,
    reflection: bool = False,
    tls: ServerTls | None = None,
    health_address: str | None = None,
) -> ServiceServer:
    """A bound, not yet started server on `address` ("host:port"): over TLS with `tls` (cag.rpc.tls), else
    plaintext; with `health_address`, a second, plaintext port there that serves the health service and nothing
    else.

    `service_names` (full names, e.g. "cag.v1.RegistryService") are reported SERVING by the health
    service (as is the overall status "") and, with `reflection`, listed by reflection.
    `auth` (cag.rpc.auth): the signing key of bearer tokens, or a token verifier — every call but
    health checks must then authenticate (reflection too) and handlers find the caller with
    `current_caller()`; a fixed Caller runs every call as that caller; None, no authentication at
    all (tests of other things only: `current_caller()` then refuses). Tracing runs outermost (a server
    span per call, continuing the caller's trace), then the request counter (cag_requests_total by the status
    the caller gets), then the error interceptor, so it also sees what later interceptors raise;
    authentication runs before `interceptors`.
    """
    chain = [
        server_interceptor(),  # outermost: the server span covers errors and authentication too
        RequestCounter(),  # counts the status the caller gets, so outside the error mapping
        ErrorInterceptor(),
        *([] if auth is None else [AuthInterceptor.for_auth(auth)]),
        *interceptors,
    ]
    server = grpc.aio.server(interceptors=chain)
    for add, servicer in servicers:
        add(servicer, server)
    await _add_health(server, service_names)
    if reflection:  # off by default: it hands whoever connects a map of every method
        names = (*service_names, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME)
        grpc_reflection.enable_server_reflection(names, server)
    _listen(server, address, tls)
    health_server = None
    if health_address is not None:
        health_server = grpc.aio.server(interceptors=[RequestCounter()])
        await _add_health(health_server, service_names)
        _listen(health_server, health_address, None)
    return ServiceServer(server, health_server)


class ServiceServer:
    """A service's gRPC server and its health-only port, if any, started and stopped together."""

    def __init__(self, server: grpc.aio.Server, health_server: grpc.aio.Server | None) -> None:
        self.server = server
        self.health_server = health_server

    async def start(self) -> None:
        await self.server.start()
        if self.health_server is not None:  # after the service: SERVING there means the service port listens
            await self.health_server.start()

    async def stop(self, grace: float | None) -> None:
        """Probes fail first, then the service drains its calls for `grace` seconds (None: cancels them)."""
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.server.stop(grace)


async def _add_health(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """grpc.health.v1 on `server`, reporting each of `service_names` and the overall status "" SERVING."""
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lack the aio module
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def _listen(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> None:
    if tls is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, tls.credentials())
