"""One way to build a service's gRPC server: its servicers plus health, reflection and the error interceptor."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import grpc
from cag.grpc.errors import ErrorInterceptor

# (generated add_XServicer_to_server, servicer instance)
ServicerBinding = tuple[Callable[[Any, grpc.aio.Server], None], object]


async def build_server(
    servicers: Iterable[ServicerBinding],
    service_names: Sequence[str],
    address: str,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> grpc.aio.Server:
    """A bound, not yet started server on `address` ("host:port").

    `service_names` (full names, e.g. "cag.v1.RegistryService") are reported SERVING by the health
    service (as is the overall status "") and listed by reflection. The error interceptor runs
    outermost, so it also sees what later `interceptors` raise.
    """
    server = grpc.aio.server(interceptors=[ErrorInterceptor(), *interceptors])
    for add, servicer in servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lack the aio module
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    server.add_insecure_port(address)
    return server
