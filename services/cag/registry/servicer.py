"""The registry's gRPC servicer: each method unpacks the request, calls RegistryCore as the authenticated
caller, packs the answer.

Errors are not handled here: the shared interceptor (cag.rpc.errors) maps them to statuses, and the auth
interceptor (cag.rpc.auth) has verified the caller before any method runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from typing_extensions import override

from cag.lifecycle import StopSignal
from cag.registry.convert import (
    audit_entry_of,
    audit_query_of,
    audit_text,
    change_of,
    list_query_of,
    module_of,
    registration_of,
    rule_set_of,
    rules_of,
    trigger_of,
    version_of,
)
from cag.registry.core import RegistryCore
from cag.rpc.auth import current_caller
from cag.v1 import common_pb2, registry_pb2, registry_pb2_grpc

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
WATCH_BATCH = 100  # changes read per poll; a full batch is followed at once by the next


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, core: RegistryCore, *, poll_interval: float = 0.1, stopping: StopSignal | None = None) -> None:
        """poll_interval: seconds Watch waits before asking the change feed again once it is caught up.
        stopping: set when the service shuts down; open Watch streams then end (OK) instead of holding it up."""
        self.core = core
        self.poll_interval = poll_interval
        self.stopping = stopping or StopSignal()

    @override
    async def Register(self, request: registry_pb2.RegisterRequest, context: Context) -> registry_pb2.RegisterResponse:
        record = await self.core.register(current_caller(), registration_of(request.module))
        return registry_pb2.RegisterResponse(module=module_of(record))

    @override
    async def Publish(self, request: registry_pb2.PublishRequest, context: Context) -> registry_pb2.PublishResponse:
        expected = version_of("expected_version", request.expected_version, minimum=0)
        record = await self.core.publish(current_caller(), request.module_id, expected_version=expected or None)
        return registry_pb2.PublishResponse(module=module_of(record))

    @override
    async def Get(self, request: registry_pb2.GetModuleRequest, context: Context) -> common_pb2.Module:
        return module_of(await self.core.get(current_caller(), request.module_id))

    @override
    async def List(
        self, request: registry_pb2.ListModulesRequest, context: Context
    ) -> registry_pb2.ListModulesResponse:
        records, next_token = await self.core.list_modules(current_caller(), list_query_of(request))
        modules = [module_of(r, with_layout=False) for r in records]
        return registry_pb2.ListModulesResponse(modules=modules, next_page_token=next_token)

    @override
    async def ResolveRoute(
        self, request: registry_pb2.ResolveRouteRequest, context: Context
    ) -> registry_pb2.ResolveRouteResponse:
        resolution = await self.core.resolve_route(current_caller(), request.tenant_id, request.route)
        chain = [module_of(r) for r in resolution.chain]
        return registry_pb2.ResolveRouteResponse(chain=chain, route_version=resolution.version)

    @override
    async def Invalidate(
        self, request: registry_pb2.InvalidateRequest, context: Context
    ) -> registry_pb2.InvalidateResponse:
        trigger = trigger_of(request)
        event_id, records = await self.core.invalidate(current_caller(), trigger, reason=request.reason)
        return registry_pb2.InvalidateResponse(module_ids=[r.module_id for r in records], event_id=event_id)

    @override
    async def Rollback(self, request: registry_pb2.RollbackRequest, context: Context) -> registry_pb2.RollbackResponse:
        to_version = version_of("to_version", request.to_version, minimum=1)
        reason = audit_text("reason", request.reason)
        record = await self.core.rollback(current_caller(), request.tenant_id, request.route, to_version, reason=reason)
        return registry_pb2.RollbackResponse(module=module_of(record))

    @override
    async def Quarantine(
        self, request: registry_pb2.QuarantineRequest, context: Context
    ) -> registry_pb2.QuarantineResponse:
        reason = audit_text("reason", request.reason)
        record = await self.core.quarantine(current_caller(), request.module_id, reason=reason)
        return registry_pb2.QuarantineResponse(module=module_of(record))

    @override
    async def PutRouteRules(
        self, request: registry_pb2.PutRouteRulesRequest, context: Context
    ) -> registry_pb2.RouteRuleSet:
        rules, routes = rules_of(request)
        expected = version_of("expected_version", request.expected_version, minimum=0)
        rule_set = await self.core.put_route_rules(
            current_caller(), request.tenant_id, rules, routes,
            expected_version=expected or None, reason=audit_text("reason", request.reason),
        )  # fmt: skip
        return rule_set_of(rule_set)

    @override
    async def GetRouteRules(
        self, request: registry_pb2.GetRouteRulesRequest, context: Context
    ) -> registry_pb2.RouteRuleSet:
        version = version_of("version", request.version, minimum=0)
        return rule_set_of(await self.core.get_route_rules(current_caller(), request.tenant_id, version or None))

    @override
    async def ListAudit(
        self, request: registry_pb2.ListAuditRequest, context: Context
    ) -> registry_pb2.ListAuditResponse:
        entries, next_token = await self.core.list_audit(current_caller(), audit_query_of(request))
        return registry_pb2.ListAuditResponse(entries=[audit_entry_of(e) for e in entries], next_page_token=next_token)

    @override
    async def Watch(
        self, request: registry_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[registry_pb2.ModuleChange]:
        """Polls the change feed until the client cancels or the service stops."""
        caller, cursor, tenant_id = current_caller(), request.since_sequence, request.tenant_id or None
        while not self.stopping.stopped:
            changes = await self.core.changes_since(caller, cursor, tenant_id=tenant_id, limit=WATCH_BATCH)
            for change in changes:
                yield change_of(change)
                cursor = change.sequence
            if len(changes) < WATCH_BATCH:
                await self.stopping.sleep(self.poll_interval)
