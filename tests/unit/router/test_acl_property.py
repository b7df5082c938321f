"""ACL property: over tens of thousands of random principals and chains, the router never serves a module across
scopes, never names a module when it refuses, and serves every chain the caller may see."""

from __future__ import annotations

import random

import pytest

from cag.acl import AclScope
from cag.errors import PermissionDeniedError
from cag.router.core import Ask, Hints, ModuleLink, Principal, RouteEntry, Router, RouteStatus, RuleSet
from cag.router.core.decision import Basis, Choice

TENANTS = ["acme", "globex", "initech"]
NAMES = ["sales", "support", "ops"]  # used as workspace and user names alike, so that mix-ups would show
CASES = 20_000


def random_principal(rng: random.Random) -> Principal:
    return Principal(
        tenant_id=rng.choice(TENANTS),
        workspace=rng.choice([None, *NAMES]),
        user=rng.choice([None, *NAMES]),
    )


def random_link(rng: random.Random, index: int) -> ModuleLink:
    scope = rng.choice(list(AclScope))
    tenant = "public" if scope is AclScope.PUBLIC else rng.choice(TENANTS)
    principal = rng.choice(NAMES) if scope in (AclScope.WORKSPACE, AclScope.USER) else ""
    return ModuleLink(
        module_id=f"m{index}-{scope.value}-{tenant}",
        version=1,
        acl_scope=scope,
        tenant_id=tenant,
        acl_principal=principal,
    )


def may_see(who: Principal, link: ModuleLink) -> bool:
    """The ACL written out case by case, independently of ModuleLink.visible_to."""
    match link.acl_scope:
        case AclScope.PUBLIC:
            return True
        case AclScope.TENANT:
            return link.tenant_id == who.tenant_id
        case AclScope.WORKSPACE:
            return link.tenant_id == who.tenant_id and link.acl_principal == who.workspace
        case AclScope.USER:
            return link.tenant_id == who.tenant_id and link.acl_principal == who.user


def test_no_chain_is_served_across_scopes() -> None:
    rng = random.Random(20240611)
    router = Router()
    served = denied = 0
    for case in range(CASES):
        who = random_principal(rng)
        chain = tuple(random_link(rng, case * 10 + i) for i in range(rng.randint(1, 4)))
        entry = RouteEntry(
            tenant_id=who.tenant_id, route="r", status=RouteStatus.SERVABLE, chain=chain, route_version=1
        )
        ask = Ask(tenant_id=who.tenant_id, query="q", hints=Hints(route="r"), principal=who)
        choice = Choice(route="r", basis=Basis.METADATA, why="route named in the request")
        allowed = all(may_see(who, link) for link in chain)
        try:
            decision, refusal = router.settle(ask, choice, RuleSet.empty(who.tenant_id), entry), ""
        except PermissionDeniedError as e:
            decision, refusal = None, str(e)
        if decision is None:
            assert not allowed, (who, chain)
            assert not any(link.module_id in refusal for link in chain)
            assert not any(t in refusal for t in TENANTS if t != who.tenant_id)
            denied += 1
            continue
        assert allowed, (who, chain)
        for link in decision.chain:
            assert link.acl_scope is AclScope.PUBLIC or link.tenant_id == who.tenant_id
            if link.acl_scope is AclScope.WORKSPACE:
                assert link.acl_principal == who.workspace
            if link.acl_scope is AclScope.USER:
                assert link.acl_principal == who.user
        served += 1
    # Both outcomes were exercised in earnest.
    assert served > CASES // 10 and denied > CASES // 10, (served, denied)


@pytest.mark.parametrize("scope", [AclScope.WORKSPACE, AclScope.USER])
def test_a_caller_without_a_workspace_or_user_sees_no_such_module(scope: AclScope) -> None:
    link = ModuleLink(module_id="m", version=1, acl_scope=scope, tenant_id="acme", acl_principal="sales")
    assert not link.visible_to(Principal(tenant_id="acme"))
