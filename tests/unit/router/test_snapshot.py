"""The route snapshot: newest rules win, a withdrawal takes chains down at once and reaches every route that
holds the module, and a fetch that predates a change cannot revive what the change withdrew."""

from __future__ import annotations

from cag.acl import AclScope
from cag.router.core import ModuleChanged, ModuleLink, RouteEntry, RouteSnapshot, RouteStatus, RuleSet


def link(module_id: str, tenant: str = "acme") -> ModuleLink:
    scope = AclScope.PUBLIC if tenant == "public" else AclScope.TENANT
    return ModuleLink(module_id=module_id, version=1, acl_scope=scope, tenant_id=tenant, acl_principal="")


def entry(tenant: str, route: str, *chain: ModuleLink) -> RouteEntry:
    return RouteEntry(tenant_id=tenant, route=route, status=RouteStatus.SERVABLE, chain=chain, route_version=1)


def change(module_id: str, tenant: str, route: str, state: str) -> ModuleChanged:
    return ModuleChanged(module_id=module_id, tenant_id=tenant, route=route, state=state)


def filled() -> RouteSnapshot:
    snapshot = RouteSnapshot()
    system = link("system", "public")
    for e in (
        entry("acme", "billing", system, link("acme-billing")),
        entry("globex", "billing", system, link("globex-billing", "globex")),
        entry("acme", "api", link("acme-api")),
    ):
        assert snapshot.put_entry(e, fetched_at=snapshot.epoch)
    return snapshot


def test_newest_rules_win() -> None:
    snapshot = RouteSnapshot()
    assert snapshot.put_rules(RuleSet("acme", 3))
    assert not snapshot.put_rules(RuleSet("acme", 2))
    assert snapshot.put_rules(RuleSet("acme", 4))
    rules = snapshot.rules("acme")
    assert rules is not None and rules.version == 4
    assert snapshot.rules("globex") is None


def test_a_stale_module_withdraws_its_route_at_once() -> None:
    snapshot = filled()
    again = snapshot.apply(change("acme-billing", "acme", "billing", "stale"))
    assert again == {("acme", "billing")}
    billing = snapshot.entry("acme", "billing")
    assert billing is not None and billing.status is RouteStatus.NOT_SERVABLE
    assert billing.problem == "module stale: source changed"
    globex = snapshot.entry("globex", "billing")
    assert globex is not None and globex.status is RouteStatus.SERVABLE


def test_a_public_parent_reaches_every_route_that_holds_it() -> None:
    snapshot = filled()
    again = snapshot.apply(change("system", "public", "system", "invalidated"))
    assert again == {("acme", "billing"), ("globex", "billing"), ("public", "system")}
    for tenant in ("acme", "globex"):
        e = snapshot.entry(tenant, "billing")
        assert e is not None and e.status is RouteStatus.NOT_SERVABLE
    api = snapshot.entry("acme", "api")
    assert api is not None and api.status is RouteStatus.SERVABLE


def test_a_public_route_is_fetched_again_for_every_tenant_that_asked_for_it() -> None:
    snapshot = RouteSnapshot()
    absent = RouteEntry(tenant_id="acme", route="faq", status=RouteStatus.ABSENT)
    assert snapshot.put_entry(absent, fetched_at=snapshot.epoch)
    assert snapshot.apply(change("faq-v1", "public", "faq", "published")) == {("acme", "faq"), ("public", "faq")}


def test_a_publish_marks_its_route_for_a_fetch_without_withdrawing_anything() -> None:
    snapshot = filled()
    assert snapshot.apply(change("acme-billing-2", "acme", "billing", "published")) == {("acme", "billing")}
    e = snapshot.entry("acme", "billing")
    assert e is not None and e.status is RouteStatus.SERVABLE


def test_a_fetch_older_than_a_change_is_refused_and_a_newer_one_kept() -> None:
    snapshot = filled()
    fetched_at = snapshot.epoch
    snapshot.apply(change("acme-billing", "acme", "billing", "stale"))
    # The fetch started before the withdrawal: it must not bring the stale module back.
    assert not snapshot.put_entry(
        entry("acme", "billing", link("system", "public"), link("acme-billing")), fetched_at=fetched_at
    )
    e = snapshot.entry("acme", "billing")
    assert e is not None and e.status is RouteStatus.NOT_SERVABLE
    assert snapshot.put_entry(entry("acme", "billing", link("acme-billing-2")), fetched_at=snapshot.epoch)
    e = snapshot.entry("acme", "billing")
    assert e is not None and e.module_ids == ("acme-billing-2",)
    # The holder index follows the new chain: the old module no longer reaches the route.
    assert snapshot.apply(change("acme-billing", "acme", "other", "retired")) == {("acme", "other")}
