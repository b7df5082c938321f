"""The registry's clients: blocking (the command line, scripts) and asyncio (services calling the registry)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator

from cag.rpc.clients.channels import AsyncChannel, BlockingChannel
from cag.rpc.tls import ClientTls
from cag.v1 import common_pb2, registry_pb2, registry_pb2_grpc

DEFAULT_TIMEOUT_S = 30.0


class RegistryClient(BlockingChannel):
    """Blocking calls on one channel to `address` (host:port); use as a context manager.

    `token`: the bearer token sent with every call (None: none, and the registry answers UNAUTHENTICATED).
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: ClientTls | None = None,
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    def register(self, module: common_pb2.Module) -> common_pb2.Module:
        request = registry_pb2.RegisterRequest(module=module)
        return self._stub.Register(request, timeout=self.timeout_s, metadata=self._metadata).module

    def publish(self, module_id: str, *, expected_version: int = 0) -> common_pb2.Module:
        """Who published is this client's authenticated identity (the registry records its token's subject)."""
        request = registry_pb2.PublishRequest(module_id=module_id, expected_version=expected_version)
        return self._stub.Publish(request, timeout=self.timeout_s, metadata=self._metadata).module

    def get(self, module_id: str) -> common_pb2.Module:
        return self._stub.Get(
            registry_pb2.GetModuleRequest(module_id=module_id), timeout=self.timeout_s, metadata=self._metadata
        )

    def list_page(self, request: registry_pb2.ListModulesRequest) -> registry_pb2.ListModulesResponse:
        return self._stub.List(request, timeout=self.timeout_s, metadata=self._metadata)

    def list_all(self, request: registry_pb2.ListModulesRequest) -> Iterator[common_pb2.Module]:
        """Every page, following next_page_token from `request.page_token`."""
        page = registry_pb2.ListModulesRequest()
        page.CopyFrom(request)
        while True:
            response = self.list_page(page)
            yield from response.modules
            if not response.next_page_token:
                return
            page.page_token = response.next_page_token

    def resolve_route(self, tenant_id: str, route: str) -> registry_pb2.ResolveRouteResponse:
        request = registry_pb2.ResolveRouteRequest(tenant_id=tenant_id, route=route)
        return self._stub.ResolveRoute(request, timeout=self.timeout_s, metadata=self._metadata)

    def rollback(self, tenant_id: str, route: str, to_version: int, *, reason: str = "") -> common_pb2.Module:
        request = registry_pb2.RollbackRequest(tenant_id=tenant_id, route=route, to_version=to_version, reason=reason)
        return self._stub.Rollback(request, timeout=self.timeout_s, metadata=self._metadata).module

    def list_audit(self, request: registry_pb2.ListAuditRequest) -> registry_pb2.ListAuditResponse:
        """One page of the audit trail, newest first."""
        return self._stub.ListAudit(request, timeout=self.timeout_s, metadata=self._metadata)

    def invalidate(self, request: registry_pb2.InvalidateRequest) -> registry_pb2.InvalidateResponse:
        return self._stub.Invalidate(request, timeout=self.timeout_s, metadata=self._metadata)

    def quarantine(self, module_id: str, reason: str) -> common_pb2.Module:
        request = registry_pb2.QuarantineRequest(module_id=module_id, reason=reason)
        return self._stub.Quarantine(request, timeout=self.timeout_s, metadata=self._metadata).module

    def put_route_rules(
        self,
        tenant_id: str,
        rules: Iterable[registry_pb2.RouteRule],
        routes: Iterable[registry_pb2.RouteInfo],
        *,
        expected_version: int = 0,
        reason: str = "",
    ) -> registry_pb2.RouteRuleSet:
        request = registry_pb2.PutRouteRulesRequest(
            tenant_id=tenant_id, rules=rules, routes=routes, expected_version=expected_version, reason=reason
        )
        return self._stub.PutRouteRules(request, timeout=self.timeout_s, metadata=self._metadata)

    def get_route_rules(self, tenant_id: str, version: int = 0) -> registry_pb2.RouteRuleSet:
        request = registry_pb2.GetRouteRulesRequest(tenant_id=tenant_id, version=version)
        return self._stub.GetRouteRules(request, timeout=self.timeout_s, metadata=self._metadata)


class AsyncRegistryClient(AsyncChannel):
    """The registry over grpc.aio, for services: the same calls as RegistryClient, awaited; Watch streams."""

    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    async def register(self, module: common_pb2.Module) -> common_pb2.Module:
        response = await self._stub.Register(registry_pb2.RegisterRequest(module=module), timeout=self.timeout_s)
        return response.module

    async def publish(self, module_id: str, *, expected_version: int = 0) -> common_pb2.Module:
        request = registry_pb2.PublishRequest(module_id=module_id, expected_version=expected_version)
        return (await self._stub.Publish(request, timeout=self.timeout_s)).module

    async def get(self, module_id: str) -> common_pb2.Module:
        return await self._stub.Get(registry_pb2.GetModuleRequest(module_id=module_id), timeout=self.timeout_s)

    async def resolve_route(self, tenant_id: str, route: str) -> registry_pb2.ResolveRouteResponse:
        request = registry_pb2.ResolveRouteRequest(tenant_id=tenant_id, route=route)
        return await self._stub.ResolveRoute(request, timeout=self.timeout_s)

    async def list_all(self, request: registry_pb2.ListModulesRequest) -> AsyncIterator[common_pb2.Module]:
        """Every page, following next_page_token from `request.page_token`."""
        page = registry_pb2.ListModulesRequest()
        page.CopyFrom(request)
        while True:
            response = await self._stub.List(page, timeout=self.timeout_s)
            for module in response.modules:
                yield module
            if not response.next_page_token:
                return
            page.page_token = response.next_page_token

    async def quarantine(self, module_id: str, reason: str) -> common_pb2.Module:
        request = registry_pb2.QuarantineRequest(module_id=module_id, reason=reason)
        return (await self._stub.Quarantine(request, timeout=self.timeout_s)).module

    async def get_route_rules(self, tenant_id: str, version: int = 0) -> registry_pb2.RouteRuleSet:
        request = registry_pb2.GetRouteRulesRequest(tenant_id=tenant_id, version=version)
        return await self._stub.GetRouteRules(request, timeout=self.timeout_s)

    async def put_route_rules(
        self,
        tenant_id: str,
        rules: Iterable[registry_pb2.RouteRule],
        routes: Iterable[registry_pb2.RouteInfo],
        *,
        expected_version: int = 0,
        reason: str = "",
    ) -> registry_pb2.RouteRuleSet:
        request = registry_pb2.PutRouteRulesRequest(
            tenant_id=tenant_id, rules=rules, routes=routes, expected_version=expected_version, reason=reason
        )
        return await self._stub.PutRouteRules(request, timeout=self.timeout_s)

    async def watch(self, *, since_sequence: int = 0, tenant_id: str = "") -> AsyncIterator[registry_pb2.ModuleChange]:
        """Changes after `since_sequence`, then live ones, until the caller stops iterating."""
        call = self._stub.Watch(registry_pb2.WatchRequest(since_sequence=since_sequence, tenant_id=tenant_id))
        try:
            async for change in call:
                yield change
        finally:
            call.cancel()
