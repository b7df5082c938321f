"""Keeps the route snapshot current from the registry: rules and chains fetched on first use and after the
initial feed, module changes from the Watch feed, rule updates from events, and a periodic reconcile.

While the registry is down the router answers from what the snapshot holds; only a tenant or route it has
never seen needs the registry (UnavailableError until it is back)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from cag.acl import PUBLIC_TENANT
from cag.errors import UnavailableError
from cag.router.convert import MalformedChainError, change_of, entry_of, rules_of
from cag.router.core import RouteEntry, RouteKey, RouteSnapshot, RouteStatus, RuleSet, not_servable_reason
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.errors import error_details
from cag.v1 import registry_pb2

log = logging.getLogger(__name__)

NOT_SERVABLE_REASONS = ("MODULE_NOT_SERVABLE", "CHAIN_BROKEN")


class RegistryRoutes:
    """`client` reads route rules, resolves routes and follows the feed."""

    def __init__(self, client: AsyncRegistryClient, snapshot: RouteSnapshot, *, timeout_s: float = 5.0) -> None:
        self.client = client
        self.snapshot = snapshot
        self.timeout_s = timeout_s
        self.caught_up = asyncio.Event()
        self._pending: set[RouteKey] = set()

    # The request path -----------------------------------------------------------------------------

    async def rules(self, tenant_id: str) -> RuleSet:
        held = self.snapshot.rules(tenant_id)
        if held is not None:
            return held
        try:
            await self.refresh_rules(tenant_id)
        except grpc.aio.AioRpcError as e:
            raise UnavailableError(
                f"the registry cannot be reached for tenant {tenant_id!r}'s routes: {e.code().name}"
            ) from None
        fetched = self.snapshot.rules(tenant_id)
        assert fetched is not None
        return fetched

    async def route(self, tenant_id: str, route: str) -> RouteEntry:
        held = self.snapshot.entry(tenant_id, route)
        if held is not None:
            return held
        try:
            entry = await self.refresh_route((tenant_id, route))
        except grpc.aio.AioRpcError as e:
            raise UnavailableError(f"the registry cannot be reached for route {route!r}: {e.code().name}") from None
        rules = self.snapshot.rules(tenant_id)
        if entry.status is RouteStatus.ABSENT and (rules is None or route not in rules.routes):
            self.snapshot.discard(tenant_id, route)  # a name nothing routes to: not worth keeping
        return entry

    # Fetching -------------------------------------------------------------------------------------

    async def refresh_rules(self, tenant_id: str) -> None:
        rules = rules_of(await self.client.get_route_rules(tenant_id))
        if self.snapshot.put_rules(rules):
            log.info("tenant %s: route rules v%d", tenant_id, rules.version)

    async def refresh_route(self, key: RouteKey) -> RouteEntry:
        """Resolves the route again and stores what the registry says; a change that arrives meanwhile wins
        (the snapshot refuses the older view and the route is resolved once more). Raises AioRpcError when
        the registry cannot answer."""
        while True:
            fetched_at = self.snapshot.epoch
            entry = await self._resolve(key)
            if self.snapshot.put_entry(entry, fetched_at=fetched_at):
                return entry

    async def _resolve(self, key: RouteKey) -> RouteEntry:
        tenant_id, route = key
        owners = (tenant_id,) if tenant_id == PUBLIC_TENANT else (tenant_id, PUBLIC_TENANT)
        for owner in owners:  # a tenant's route may be served by a public module of that name
            try:
                return entry_of(tenant_id, route, await self.client.resolve_route(owner, route))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    continue
                details = error_details(e)
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION or details is None:
                    raise
                if details.reason not in NOT_SERVABLE_REASONS:
                    raise
                return self._not_servable(
                    key,
                    not_servable_reason(details.metadata.get("state", ""))
                    if details.reason == "MODULE_NOT_SERVABLE"
                    else "module chain broken",
                )
            except MalformedChainError as e:
                log.error("route %s/%s: %s", tenant_id, route, e)
                return self._not_servable(key, "module chain malformed")
        return RouteEntry(tenant_id=tenant_id, route=route, status=RouteStatus.ABSENT)

    def _not_servable(self, key: RouteKey, problem: str) -> RouteEntry:
        """Keeps the chain last known (its ACL is still checked, its modules' changes still reach it)."""
        held = self.snapshot.entry(*key)
        chain = held.chain if held is not None else ()
        return RouteEntry(tenant_id=key[0], route=key[1], status=RouteStatus.NOT_SERVABLE, chain=chain, problem=problem)

    # Keeping current ------------------------------------------------------------------------------

    async def on_change(self, change: registry_pb2.ModuleChange) -> None:
        """A module change from the feed: chains holding a withdrawn module go down at once; the affected
        routes are resolved again (after the initial backlog, which queues them for `on_caught_up`)."""
        self._pending |= self.snapshot.apply(change_of(change))
        if self.caught_up.is_set():
            await self._refresh_pending()

    async def on_caught_up(self) -> None:
        """The feed's backlog is applied: resolve every route it named and read every tenant's rules, then
        the snapshot is complete (the router may start answering)."""
        await self._refresh_pending()
        for tenant_id in {t for t, _ in self.snapshot.routes()} - {PUBLIC_TENANT}:
            await self.refresh_rules(tenant_id)
        if not self.caught_up.is_set():
            log.info(
                "route snapshot complete: %d route(s), %d tenant(s)",
                len(self.snapshot.routes()),
                len(self.snapshot.tenants()),
            )
        self.caught_up.set()

    async def _refresh_pending(self) -> None:
        # A failure leaves the rest pending (the feed reconnects and hands the change over again).
        while self._pending:
            key = next(iter(self._pending))
            await self.refresh_route(key)
            self._pending.discard(key)

    async def on_rules_updated(self, tenant_id: str, version: int) -> None:
        held = self.snapshot.rules(tenant_id)
        if held is None or held.version < version:
            await self.refresh_rules(tenant_id)

    async def reconcile(self) -> None:
        """Reads every known tenant's rules and resolves every known route again (what a lost event or a
        missed change would have left out of date); a failure is logged and the rest still tried."""
        failures = 0
        for tenant_id in self.snapshot.tenants() - {PUBLIC_TENANT}:
            try:
                await self.refresh_rules(tenant_id)
            except grpc.aio.AioRpcError:
                failures += 1
        for key in self.snapshot.routes():
            try:
                await self.refresh_route(key)
            except grpc.aio.AioRpcError:
                failures += 1
        if failures:
            log.warning("reconcile: %d registry call(s) failed; serving from the snapshot meanwhile", failures)

    async def reconcile_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.reconcile()
