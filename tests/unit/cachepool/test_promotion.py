"""The promotion rule on hand-picked modules: which faster tiers each earns, the confident thresholds, system and
tool parents always promoted and pinned, and the rule's own validation."""

from __future__ import annotations

from typing import Any

import pytest

from cag.acl import AclScope
from cag.cachepool.core import Promotion, PromotionRule, Tier, is_system_parent
from cag.errors import InvalidFieldError

RULE = PromotionRule()  # ram 2 hits, engine 6; from confidence 0.8: ram 1, engine 3


def decide(
    hits: int,
    confidence: float,
    found_in: Tier,
    *,
    acl_scope: AclScope = AclScope.TENANT,
    parent_id: str = "root",
    rule: PromotionRule = RULE,
) -> Promotion:
    """The rule's decision for a module (a tenant's child module unless told otherwise)."""
    return rule.decide(
        hits_last_15m=hits, confidence=confidence, found_in=found_in, acl_scope=acl_scope, parent_id=parent_id
    )


@pytest.mark.parametrize(
    ("hits", "confidence", "copy_to"),
    [
        (1, 0.0, ()),  # one hit, unsure: stays on disk
        (2, 0.0, (Tier.HOST_RAM,)),
        (5, 0.5, (Tier.HOST_RAM,)),
        (6, 0.0, (Tier.ENGINE, Tier.HOST_RAM)),
        (1, 0.8, (Tier.HOST_RAM,)),  # confident: one hit earns RAM
        (2, 0.79, (Tier.HOST_RAM,)),  # just short of confident: the plain thresholds
        (3, 0.8, (Tier.ENGINE, Tier.HOST_RAM)),
        (3, 1.0, (Tier.ENGINE, Tier.HOST_RAM)),
        (0, 1.0, ()),  # no hit in the window earns nothing, however sure the route
    ],
)
def test_a_module_on_local_disk_earns_the_tiers_its_hits_and_confidence_reach(
    hits: int, confidence: float, copy_to: tuple[Tier, ...]
) -> None:
    promotion = decide(hits, confidence, Tier.LOCAL_DISK)
    assert promotion == Promotion(copy_to=copy_to, pin=False)
    assert (promotion.to_engine, promotion.to_host_ram) == (Tier.ENGINE in copy_to, Tier.HOST_RAM in copy_to)


@pytest.mark.parametrize(
    ("found_in", "copy_to"),
    [
        (Tier.OBJECT_STORE, (Tier.ENGINE, Tier.HOST_RAM)),
        (Tier.LOCAL_DISK, (Tier.ENGINE, Tier.HOST_RAM)),
        (Tier.HOST_RAM, (Tier.ENGINE,)),  # already in RAM: only the engine is left to copy into
        (Tier.ENGINE, ()),
    ],
)
def test_only_tiers_faster_than_where_the_module_was_found_are_named(found_in: Tier, copy_to: tuple[Tier, ...]) -> None:
    assert decide(10, 0.0, found_in).copy_to == copy_to


@pytest.mark.parametrize(
    ("found_in", "copy_to"),
    [
        (Tier.OBJECT_STORE, (Tier.ENGINE, Tier.HOST_RAM)),
        (Tier.LOCAL_DISK, (Tier.ENGINE, Tier.HOST_RAM)),
        (Tier.HOST_RAM, (Tier.ENGINE,)),
        (Tier.ENGINE, ()),  # already there: nothing to copy, but pinned still
    ],
)
def test_system_and_tool_parents_are_always_promoted_and_pinned(found_in: Tier, copy_to: tuple[Tier, ...]) -> None:
    # No hit in the window and an unsure route: a plain module would earn nothing.
    assert decide(0, 0.0, found_in, acl_scope=AclScope.PUBLIC, parent_id="") == Promotion(copy_to=copy_to, pin=True)


@pytest.mark.parametrize(
    ("acl_scope", "parent_id", "expected"),
    [
        (AclScope.PUBLIC, "", True),
        (AclScope.PUBLIC, "root", False),  # a public child is promoted on its hits like any other
        (AclScope.TENANT, "", False),  # a tenant's own root too
        (AclScope.USER, "", False),
    ],
)
def test_a_system_parent_is_public_and_has_no_parent(acl_scope: AclScope, parent_id: str, expected: bool) -> None:
    assert is_system_parent(acl_scope, parent_id) is expected
    assert decide(0, 0.0, Tier.LOCAL_DISK, acl_scope=acl_scope, parent_id=parent_id).pin is expected


def test_a_stricter_rule_keeps_more_modules_down() -> None:
    strict = PromotionRule(
        ram_min_hits=4, engine_min_hits=10, confident_at=0.95, confident_ram_min_hits=2, confident_engine_min_hits=5
    )
    assert decide(3, 0.9, Tier.LOCAL_DISK, rule=strict).copy_to == ()
    assert decide(3, 0.95, Tier.LOCAL_DISK, rule=strict).copy_to == (Tier.HOST_RAM,)
    assert decide(3, 0.9, Tier.LOCAL_DISK).copy_to == (Tier.ENGINE, Tier.HOST_RAM)  # the default: confident at 0.8


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"confident_at": 1.5}, "confident_at"),
        ({"ram_min_hits": 0, "confident_ram_min_hits": 0}, "ram_min_hits"),
        ({"confident_ram_min_hits": 3}, "confident_ram_min_hits"),  # above ram_min_hits 2
        ({"confident_engine_min_hits": 7}, "confident_engine_min_hits"),  # above engine_min_hits 6
        ({"engine_min_hits": 1, "ram_min_hits": 2, "confident_engine_min_hits": 1}, "engine_min_hits"),
        ({"confident_engine_min_hits": 1, "confident_ram_min_hits": 2}, "confident_engine_min_hits"),
    ],
)
def test_the_rule_refuses_inconsistent_thresholds(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        PromotionRule(**fields)
    assert caught.value.field == field


@pytest.mark.parametrize(("hits", "confidence", "field"), [(-1, 0.5, "hits_last_15m"), (1, 1.2, "confidence")])
def test_a_decision_refuses_out_of_range_inputs(hits: int, confidence: float, field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        decide(hits, confidence, Tier.LOCAL_DISK)
    assert caught.value.field == field
