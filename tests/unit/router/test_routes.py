"""The snapshot adapter against a stateful in-memory registry: first-use fetches, changes from the feed,
public routes, stale chains from ResolveRoute's details, and serving from the snapshot while the registry is down."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from cag.errors import CagError, ModuleNotServableError, UnavailableError
from cag.router.core import RouteSnapshot, RouteStatus
from cag.router.routes import RegistryRoutes
from cag.rpc.errors import status_of
from cag.v1 import common_pb2, registry_pb2


def rpc_error(code: grpc.StatusCode, error: CagError | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if error is not None:
        for key, value in rpc_status.to_status(status_of(error)).trailing_metadata:
            trailing.add(key, value)
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), trailing, details=str(error or code.name), debug_error_string=""
    )


def module(module_id: str, tenant: str, version: int = 1) -> common_pb2.Module:
    scope = common_pb2.ACL_SCOPE_PUBLIC if tenant == "public" else common_pb2.ACL_SCOPE_TENANT
    return common_pb2.Module(
        module_id=module_id, tenant_id=tenant, version=version, acl_scope=scope, state=common_pb2.MODULE_STATE_PUBLISHED
    )


class MemoryRegistry:
    """resolve_route and get_route_rules over dicts; `down` makes every call fail as an unreachable server would."""

    def __init__(self) -> None:
        self.chains: dict[tuple[str, str], list[common_pb2.Module] | CagError] = {}
        self.rules: dict[str, registry_pb2.RouteRuleSet] = {}
        self.down = False
        self.calls = 0

    async def resolve_route(self, tenant_id: str, route: str) -> registry_pb2.ResolveRouteResponse:
        self.calls += 1
        if self.down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE)
        found = self.chains.get((tenant_id, route))
        if found is None:
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        if isinstance(found, CagError):
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, found)
        return registry_pb2.ResolveRouteResponse(chain=found, route_version=found[-1].version)

    async def get_route_rules(self, tenant_id: str, version: int = 0) -> registry_pb2.RouteRuleSet:
        self.calls += 1
        if self.down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE)
        return self.rules.get(tenant_id, registry_pb2.RouteRuleSet(tenant_id=tenant_id))


def change(
    module_id: str, tenant: str, route: str, state: common_pb2.ModuleState.ValueType, sequence: int = 1
) -> registry_pb2.ModuleChange:
    return registry_pb2.ModuleChange(sequence=sequence, module_id=module_id, tenant_id=tenant, route=route, state=state)


@pytest.fixture
def registry() -> MemoryRegistry:
    registry = MemoryRegistry()
    registry.chains[("acme", "billing")] = [module("system", "public"), module("acme-billing", "acme", 3)]
    registry.chains[("public", "faq")] = [module("faq", "public")]
    registry.rules["acme"] = registry_pb2.RouteRuleSet(
        tenant_id="acme",
        version=2,
        routes=[registry_pb2.RouteInfo(route="billing"), registry_pb2.RouteInfo(route="later")],
    )
    return registry


@pytest.fixture
def routes(registry: MemoryRegistry) -> RegistryRoutes:
    return RegistryRoutes(registry, RouteSnapshot())  # type: ignore[arg-type]  # the in-memory registry


async def test_first_use_fetches_then_serves_from_the_snapshot(
    registry: MemoryRegistry, routes: RegistryRoutes
) -> None:
    rules = await routes.rules("acme")
    entry = await routes.route("acme", "billing")
    assert rules.version == 2
    assert (entry.status, entry.module_ids, entry.route_version) == (
        RouteStatus.SERVABLE,
        ("system", "acme-billing"),
        3,
    )
    calls = registry.calls
    await routes.rules("acme")
    await routes.route("acme", "billing")
    assert registry.calls == calls


async def test_a_tenant_route_may_be_served_by_a_public_module(routes: RegistryRoutes) -> None:
    entry = await routes.route("acme", "faq")
    assert (entry.tenant_id, entry.status, entry.module_ids) == ("acme", RouteStatus.SERVABLE, ("faq",))


async def test_unknown_names_are_not_kept_but_routes_of_the_rules_are(routes: RegistryRoutes) -> None:
    await routes.rules("acme")
    assert (await routes.route("acme", "typo")).status is RouteStatus.ABSENT
    assert (await routes.route("acme", "later")).status is RouteStatus.ABSENT
    assert routes.snapshot.routes() == {("acme", "later")}


async def test_a_stale_chain_from_resolve_is_not_servable_and_keeps_its_acl(
    registry: MemoryRegistry, routes: RegistryRoutes
) -> None:
    await routes.route("acme", "billing")
    registry.chains[("acme", "billing")] = ModuleNotServableError("stale", module="acme-billing", state="stale")
    entry = await routes.refresh_route(("acme", "billing"))
    assert (entry.status, entry.problem) == (RouteStatus.NOT_SERVABLE, "module stale: source changed")
    assert entry.module_ids == ("system", "acme-billing")


async def test_feed_changes_withdraw_at_once_and_resolve_again(
    registry: MemoryRegistry, routes: RegistryRoutes
) -> None:
    await routes.route("acme", "billing")
    await routes.on_caught_up()
    registry.chains[("acme", "billing")] = ModuleNotServableError("stale", module="acme-billing", state="stale")
    await routes.on_change(change("acme-billing", "acme", "billing", common_pb2.MODULE_STATE_STALE))
    entry = routes.snapshot.entry("acme", "billing")
    assert entry is not None and entry.status is RouteStatus.NOT_SERVABLE
    # A recompiled module is published: the route serves the new version.
    registry.chains[("acme", "billing")] = [module("system", "public"), module("acme-billing-2", "acme", 4)]
    await routes.on_change(change("acme-billing-2", "acme", "billing", common_pb2.MODULE_STATE_PUBLISHED, 2))
    entry = routes.snapshot.entry("acme", "billing")
    assert entry is not None and (entry.status, entry.route_version) == (RouteStatus.SERVABLE, 4)


async def test_the_feed_backlog_builds_the_snapshot_once_caught_up(
    registry: MemoryRegistry, routes: RegistryRoutes
) -> None:
    await routes.on_change(change("acme-billing", "acme", "billing", common_pb2.MODULE_STATE_PUBLISHED))
    assert routes.snapshot.entry("acme", "billing") is None  # the backlog queues; nothing fetched yet
    await routes.on_caught_up()
    assert routes.caught_up.is_set()
    entry = routes.snapshot.entry("acme", "billing")
    rules = routes.snapshot.rules("acme")
    assert entry is not None and entry.status is RouteStatus.SERVABLE
    assert rules is not None and rules.version == 2


async def test_while_the_registry_is_down_the_snapshot_serves(registry: MemoryRegistry, routes: RegistryRoutes) -> None:
    await routes.rules("acme")
    await routes.route("acme", "billing")
    registry.down = True
    assert (await routes.route("acme", "billing")).status is RouteStatus.SERVABLE
    await routes.reconcile()  # fails quietly, keeps the snapshot
    assert (await routes.route("acme", "billing")).status is RouteStatus.SERVABLE
    with pytest.raises(UnavailableError):
        await routes.rules("globex")
    with pytest.raises(UnavailableError):
        await routes.route("acme", "api")


async def test_rule_updates_apply_only_newer_versions(registry: MemoryRegistry, routes: RegistryRoutes) -> None:
    await routes.rules("acme")
    registry.rules["acme"] = registry_pb2.RouteRuleSet(tenant_id="acme", version=3)
    await routes.on_rules_updated("acme", 2)
    assert (await routes.rules("acme")).version == 2
    await routes.on_rules_updated("acme", 3)
    assert (await routes.rules("acme")).version == 3
