"""One request's decision: the request checked at the edge, then the core's order of decision over the snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from cag.auth import Caller, Scope
from cag.errors import InvalidFieldError
from cag.identifiers import check_name, check_text
from cag.router.core import Ask, Decision, Principal, Router, hints_of
from cag.router.routes import RegistryRoutes


@dataclass(frozen=True, kw_only=True)
class RouteRequest:
    """What a GenerateRequest asks, unchecked."""

    tenant_id: str
    query: str
    metadata: Mapping[str, str]


class Decider:
    def __init__(self, router: Router, routes: RegistryRoutes, *, max_query_chars: int) -> None:
        self.router = router
        self.routes = routes
        self.max_query_chars = max_query_chars

    def ask_of(self, caller: Caller, request: RouteRequest) -> Ask:
        """The checked request: InvalidFieldError for a missing or malformed tenant, an empty, oversized or
        control-character query, or bad routing hints; PermissionDeniedError when the caller may not read the
        tenant."""
        tenant_id = request.tenant_id or caller.sole_tenant
        if tenant_id is None:
            raise InvalidFieldError("tenant_id", "is required: the token names several tenants (or every one)")
        check_name("tenant_id", tenant_id)
        caller.require(Scope.READ, tenant_id)
        query = check_text("query", request.query, max_chars=self.max_query_chars, required=True)
        if not query.strip():
            raise InvalidFieldError("query", "is blank")
        hints = hints_of(request.metadata)
        # An end user's workspace and user exist inside its one tenant; elsewhere they qualify nothing.
        inside = caller.sole_tenant == tenant_id
        principal = Principal(
            tenant_id=tenant_id, workspace=caller.workspace if inside else None, user=caller.user if inside else None
        )
        return Ask(tenant_id=tenant_id, query=query, hints=hints, principal=principal)

    async def decide(self, caller: Caller, request: RouteRequest) -> Decision:
        ask = self.ask_of(caller, request)
        rules = await self.routes.rules(ask.tenant_id)
        if self.router.classifier is None:
            choice = self.router.choose(ask, rules)
        else:  # an embedding takes milliseconds of CPU: off the event loop
            choice = await asyncio.to_thread(self.router.choose, ask, rules)
        entry = await self.routes.route(ask.tenant_id, choice.route) if choice.route else None
        return self.router.settle(ask, choice, rules, entry)
