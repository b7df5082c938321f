"""The cache pool's clients: blocking (scripts, operators' tools) and asyncio (the router), each presenting a
bearer token (the router's service identity or an admin's: the pool refuses anyone else). Generate hands back
gRPC's own call object, so that whoever reads the stream can also cancel it (which frees its engine slot)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from cag.rpc.clients.channels import AsyncChannel, BlockingChannel
from cag.rpc.tls import ClientTls
from cag.v1 import cachepool_pb2, cachepool_pb2_grpc, common_pb2

# A generation streams for as long as the answer is; a prefetch may copy a large module.
DEFAULT_TIMEOUT_S = 120.0


class CachePoolClient(BlockingChannel):
    """Blocking calls on one channel to `address` (host:port), as `token`; use as a context manager."""

    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = cachepool_pb2_grpc.CachePoolServiceStub(self._channel)

    def generate(
        self, request: cachepool_pb2.CachePoolGenerateRequest, *, timeout_s: float | None = None
    ) -> grpc.CallIterator[common_pb2.GenerateResponse]:
        """The Generate stream: iterate it for GenerateResponse events (tokens, then done); `.cancel()` ends
        the call. Raises grpc.RpcError while iterating when the call fails."""
        return self._stub.Generate(request, timeout=self._timeout(timeout_s), metadata=self._metadata)

    def prefetch(
        self, module_ids: Iterable[str], tier: common_pb2.Tier.ValueType = common_pb2.TIER_UNSPECIFIED
    ) -> list[cachepool_pb2.ResidentModule]:
        """Loads the modules into `tier` (unspecified: the engine; then `module_ids` is a chain, root first)."""
        request = cachepool_pb2.PrefetchRequest(module_ids=list(module_ids), tier=tier)
        return list(self._stub.Prefetch(request, timeout=self.timeout_s, metadata=self._metadata).modules)

    def pin(self, module_id: str, *, pinned: bool = True) -> cachepool_pb2.ResidentModule:
        request = cachepool_pb2.PinRequest(module_id=module_id, pinned=pinned)
        return self._stub.Pin(request, timeout=self.timeout_s, metadata=self._metadata).module

    def evict(
        self, module_id: str, tier: common_pb2.Tier.ValueType = common_pb2.TIER_UNSPECIFIED
    ) -> cachepool_pb2.ResidentModule:
        """Drops the module from `tier` (unspecified: every tier); returns where it is left."""
        request = cachepool_pb2.EvictRequest(module_id=module_id, tier=tier)
        return self._stub.Evict(request, timeout=self.timeout_s, metadata=self._metadata).module

    def stats(self) -> cachepool_pb2.StatsResponse:
        return self._stub.Stats(cachepool_pb2.StatsRequest(), timeout=self.timeout_s, metadata=self._metadata)


class AsyncCachePoolClient(AsyncChannel):
    """The cache pool over grpc.aio: the same calls as CachePoolClient; Generate's call is async-iterable."""

    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = cachepool_pb2_grpc.CachePoolServiceStub(self._channel)

    def generate(
        self, request: cachepool_pb2.CachePoolGenerateRequest, *, timeout_s: float | None = None
    ) -> grpc.aio.UnaryStreamCall[cachepool_pb2.CachePoolGenerateRequest, common_pb2.GenerateResponse]:
        """The Generate stream: `async for` its GenerateResponse events; `.cancel()` ends the call."""
        return self._stub.Generate(request, timeout=self._timeout(timeout_s))

    def generate_from_evidence(
        self, request: cachepool_pb2.EvidenceGenerateRequest, *, timeout_s: float | None = None
    ) -> grpc.aio.UnaryStreamCall[cachepool_pb2.EvidenceGenerateRequest, common_pb2.GenerateResponse]:
        """The GenerateFromEvidence stream: `async for` its GenerateResponse events; `.cancel()` ends the call."""
        return self._stub.GenerateFromEvidence(request, timeout=self._timeout(timeout_s))

    async def prefetch(
        self, module_ids: Iterable[str], tier: common_pb2.Tier.ValueType = common_pb2.TIER_UNSPECIFIED
    ) -> list[cachepool_pb2.ResidentModule]:
        request = cachepool_pb2.PrefetchRequest(module_ids=list(module_ids), tier=tier)
        return list((await self._stub.Prefetch(request, timeout=self.timeout_s)).modules)

    async def pin(self, module_id: str, *, pinned: bool = True) -> cachepool_pb2.ResidentModule:
        request = cachepool_pb2.PinRequest(module_id=module_id, pinned=pinned)
        return (await self._stub.Pin(request, timeout=self.timeout_s)).module

    async def evict(
        self, module_id: str, tier: common_pb2.Tier.ValueType = common_pb2.TIER_UNSPECIFIED
    ) -> cachepool_pb2.ResidentModule:
        request = cachepool_pb2.EvictRequest(module_id=module_id, tier=tier)
        return (await self._stub.Evict(request, timeout=self.timeout_s)).module

    async def stats(self) -> cachepool_pb2.StatsResponse:
        return await self._stub.Stats(cachepool_pb2.StatsRequest(), timeout=self.timeout_s)
