"""cag.v1 messages ↔ the router's core types, and the audit event of a decision."""

from __future__ import annotations

import math

from cag.acl import AclScope
from cag.errors import InvalidFieldError
from cag.events.schemas import RouteDecidedV1
from cag.router.core import (
    AnswerPath,
    Basis,
    Decision,
    ModuleChanged,
    ModuleLink,
    RouteEntry,
    RouteInfo,
    RouteRule,
    RouteStatus,
    RuleSet,
)
from cag.v1 import common_pb2, registry_pb2

SCOPES = {
    common_pb2.ACL_SCOPE_PUBLIC: AclScope.PUBLIC,
    common_pb2.ACL_SCOPE_TENANT: AclScope.TENANT,
    common_pb2.ACL_SCOPE_WORKSPACE: AclScope.WORKSPACE,
    common_pb2.ACL_SCOPE_USER: AclScope.USER,
}
BASES = {
    Basis.METADATA: common_pb2.ROUTE_BASIS_METADATA,
    Basis.RULE: common_pb2.ROUTE_BASIS_RULE,
    Basis.CLASSIFIER: common_pb2.ROUTE_BASIS_CLASSIFIER,
    Basis.NONE: common_pb2.ROUTE_BASIS_NONE,
}
PATHS = {AnswerPath.MODULE: common_pb2.ANSWER_PATH_MODULE, AnswerPath.FALLBACK: common_pb2.ANSWER_PATH_FALLBACK}


class MalformedChainError(ValueError):
    """The registry answered a chain the router cannot check (a module without a known ACL scope)."""


def state_name(state: common_pb2.ModuleState.ValueType) -> str:
    """MODULE_STATE_STALE → "stale" (the registry's own state names)."""
    return common_pb2.ModuleState.Name(state).removeprefix("MODULE_STATE_").lower()


def rules_of(message: registry_pb2.RouteRuleSet) -> RuleSet:
    rules = [
        RouteRule(rule_id=r.rule_id, route=r.route, metadata=dict(r.metadata), keywords=tuple(r.keywords))
        for r in message.rules
    ]
    routes = [RouteInfo(route=i.route, description=i.description, priority=i.priority or 1) for i in message.routes]
    return RuleSet(message.tenant_id, message.version, rules, routes)


def link_of(module: common_pb2.Module) -> ModuleLink:
    scope = SCOPES.get(module.acl_scope)
    if scope is None:  # fail closed: a module whose audience is unknown is served to no one
        raise MalformedChainError(f"module {module.module_id} has no known ACL scope")
    return ModuleLink(
        module_id=module.module_id,
        version=module.version,
        acl_scope=scope,
        tenant_id=module.tenant_id,
        acl_principal=module.acl_principal,
        state=state_name(module.state),
    )


def entry_of(tenant_id: str, route: str, resolved: registry_pb2.ResolveRouteResponse) -> RouteEntry:
    """A servable entry for `tenant_id`'s `route` (the chain may belong to the public tenant)."""
    return RouteEntry(
        tenant_id=tenant_id,
        route=route,
        status=RouteStatus.SERVABLE,
        chain=tuple(link_of(m) for m in resolved.chain),
        route_version=resolved.route_version,
    )


def change_of(change: registry_pb2.ModuleChange) -> ModuleChanged:
    return ModuleChanged(
        module_id=change.module_id, tenant_id=change.tenant_id, route=change.route, state=state_name(change.state)
    )


def decision_message(decision: Decision) -> common_pb2.RouteDecision:
    return common_pb2.RouteDecision(
        decision_id=decision.decision_id,
        tenant_id=decision.tenant_id,
        route=decision.route,
        module_ids=decision.module_ids,
        module_version=decision.module_version,
        basis=BASES[decision.basis],
        rule_id=decision.rule_id,
        rule_version=decision.rule_version,
        confidence=decision.confidence,
        path=PATHS[decision.path],
        reason=decision.reason,
    )


def decided_event(decision: Decision) -> RouteDecidedV1:
    """The audit record of a served request (its event id is the decision id)."""
    return RouteDecidedV1(
        request_id=decision.decision_id,
        tenant_id=decision.tenant_id,
        route=decision.route,
        path=decision.path.value,
        module_ids=list(decision.module_ids),
        module_version=decision.module_version or None,
        rule=decision.rule_id,
        confidence=decision.confidence,
        reason=decision.reason[:1024],
    )


# The most tokens one answer may ask for; the cache pool applies its own (lower) limit too.
MAX_NEW_TOKENS = 4096


def sampling_message(sampling: common_pb2.SamplingParams) -> common_pb2.SamplingParams:
    """The request's sampling, checked at the router's edge (INVALID_ARGUMENT naming the field) and copied for the
    cache pool: a negative or huge length, a non-finite or negative temperature or a nucleus outside [0, 1] never
    travels further."""
    if not 0 <= sampling.max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidFieldError("sampling.max_new_tokens", f"must be in [0, {MAX_NEW_TOKENS}]")
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise InvalidFieldError("sampling.temperature", "must be a finite number >= 0 (0: greedy)")
    if not math.isfinite(sampling.top_p) or not 0 <= sampling.top_p <= 1:
        raise InvalidFieldError("sampling.top_p", "must be in [0, 1] (0: no cut)")
    return common_pb2.SamplingParams(
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
    )
