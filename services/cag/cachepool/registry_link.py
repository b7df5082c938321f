"""The registry as the pool uses it, over gRPC: records (Get) and quarantines, errors turned into the pool's own."""

from __future__ import annotations

import grpc

from cag.cachepool.convert import record_of
from cag.cachepool.core.errors import UnknownModuleError
from cag.cachepool.core.snapshot import ModuleRecord
from cag.errors import UnavailableError
from cag.rpc.clients import AsyncRegistryClient
from cag.v1 import registry_pb2, registry_pb2_grpc


class RegistryLink:
    """`client` reads records; Quarantine goes through `channel` (authenticated as the pool)."""

    def __init__(self, client: AsyncRegistryClient, channel: grpc.aio.Channel, *, timeout_s: float = 10.0) -> None:
        self._client = client
        self._quarantine = registry_pb2_grpc.RegistryServiceStub(channel).Quarantine
        self._timeout_s = timeout_s

    async def get(self, module_id: str) -> ModuleRecord:
        try:
            return record_of(await self._client.get(module_id))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise UnknownModuleError(module_id) from None
            raise _unavailable(e, f"read module {module_id}") from None

    async def quarantine(self, module_id: str, reason: str) -> None:
        try:
            request = registry_pb2.QuarantineRequest(module_id=module_id, reason=reason)
            await self._quarantine(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as e:
            raise _unavailable(e, f"quarantine module {module_id}") from None


def _unavailable(error: grpc.aio.AioRpcError, what: str) -> UnavailableError:
    # The pool's caller gets UNAVAILABLE (retry later), not the registry's status: the registry was the pool's
    # dependency, not the caller's.
    return UnavailableError(f"the registry could not {what}: {error.code().name}: {error.details()}")
