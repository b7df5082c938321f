"""The router's picture of the registry: per tenant the newest rule set, per (tenant, route) the chain that
serves it. Filled by an adapter (registry calls, the Watch feed, events); this part decides what each change
makes out of date and keeps a view fetched before a withdrawal from reviving a chain the withdrawal took down."""

from __future__ import annotations

from dataclasses import dataclass

from cag.acl import PUBLIC_TENANT
from cag.router.core.chains import PUBLISHED, RouteEntry
from cag.router.core.rules import RuleSet

RouteKey = tuple[str, str]  # (tenant_id, route)


@dataclass(frozen=True, kw_only=True)
class ModuleChanged:
    """One change of the registry's feed: `module_id` of (tenant_id, route) entered `state`."""

    module_id: str
    tenant_id: str
    route: str
    state: str


class RouteSnapshot:
    def __init__(self) -> None:
        self._rules: dict[str, RuleSet] = {}
        self._entries: dict[RouteKey, RouteEntry] = {}
        self._holders: dict[str, set[RouteKey]] = {}  # module id → the entries whose chain holds it
        self._epoch = 0  # counts changes applied
        self._touched: dict[RouteKey, int] = {}  # the epoch of the last change that reached each entry

    # Rules ------------------------------------------------------------------------------------------

    def rules(self, tenant_id: str) -> RuleSet | None:
        return self._rules.get(tenant_id)

    def put_rules(self, rules: RuleSet) -> bool:
        """Keeps the newest version: a fetch that raced a newer one changes nothing (False)."""
        held = self._rules.get(rules.tenant_id)
        if held is not None and held.version > rules.version:
            return False
        self._rules[rules.tenant_id] = rules
        return True

    def tenants(self) -> set[str]:
        return set(self._rules) | {tenant for tenant, _ in self._entries}

    # Routes -----------------------------------------------------------------------------------------

    def entry(self, tenant_id: str, route: str) -> RouteEntry | None:
        return self._entries.get((tenant_id, route))

    def routes(self) -> set[RouteKey]:
        return set(self._entries)

    @property
    def epoch(self) -> int:
        """Read before fetching an entry; hand it to `put_entry`."""
        return self._epoch

    def put_entry(self, entry: RouteEntry, *, fetched_at: int) -> bool:
        """Stores an entry fetched when the epoch was `fetched_at`, unless a change reached its route since:
        the fetch may predate that change, so it is refused (False) and the route is to be fetched again."""
        key = (entry.tenant_id, entry.route)
        if self._touched.get(key, -1) > fetched_at:
            return False
        old = self._entries.get(key)
        for module_id in old.module_ids if old is not None else ():
            self._holders.get(module_id, set()).discard(key)
        for module_id in entry.module_ids:
            self._holders.setdefault(module_id, set()).add(key)
        self._entries[key] = entry
        return True

    def discard(self, tenant_id: str, route: str) -> None:
        """Forgets a route (one that a request named and that turned out not to exist: keeping every such name
        would let requests grow the snapshot without bound)."""
        old = self._entries.pop((tenant_id, route), None)
        for module_id in old.module_ids if old is not None else ():
            self._holders.get(module_id, set()).discard((tenant_id, route))

    def apply(self, change: ModuleChanged) -> set[RouteKey]:
        """Applies a module change and returns the routes to fetch again: the change's own route, every route
        whose chain holds the module, and for a public module every tenant's route of its name (a tenant's
        route can be served by a public module). A module that left PUBLISHED withdraws the chains holding it
        at once, before any fetch."""
        self._epoch += 1
        affected = set(self._holders.get(change.module_id, ())) | {(change.tenant_id, change.route)}
        if change.tenant_id == PUBLIC_TENANT:
            affected |= {key for key in self._entries if key[1] == change.route}
        for key in affected:
            self._touched[key] = self._epoch
            entry = self._entries.get(key)
            if change.state != PUBLISHED and entry is not None and change.module_id in entry.module_ids:
                self._entries[key] = entry.withdrawn(change.module_id, change.state)
        return affected
