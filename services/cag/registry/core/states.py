"""The module lifecycle as a state machine; every change of state goes through `check_transition`."""

from __future__ import annotations

from enum import StrEnum

from cag.errors import CagError, Status


class ModuleState(StrEnum):
    BUILDING = "building"
    VALIDATING = "validating"
    PUBLISHED = "published"
    STALE = "stale"
    INVALIDATED = "invalidated"
    EXPIRED = "expired"
    QUARANTINED = "quarantined"
    RETIRED = "retired"


S = ModuleState
_ENDED = {S.RETIRED}
ALLOWED: dict[ModuleState, frozenset[ModuleState]] = {
    # Unpublished modules can be overtaken by an invalidation too: they must then never be published.
    S.BUILDING: frozenset({S.VALIDATING, S.STALE, S.INVALIDATED, S.EXPIRED, S.QUARANTINED, S.RETIRED}),
    S.VALIDATING: frozenset({S.PUBLISHED, S.STALE, S.INVALIDATED, S.EXPIRED, S.QUARANTINED, S.RETIRED}),
    S.PUBLISHED: frozenset({S.STALE, S.INVALIDATED, S.EXPIRED, S.QUARANTINED, S.RETIRED}),
    # A stale module may still be invalidated or expire for another reason before it is replaced.
    S.STALE: frozenset({S.INVALIDATED, S.EXPIRED, S.QUARANTINED, S.RETIRED}),
    S.INVALIDATED: frozenset({S.RETIRED}),
    S.EXPIRED: frozenset({S.RETIRED}),
    S.QUARANTINED: frozenset({S.RETIRED}),
    S.RETIRED: frozenset(),
}
# States in which a module may still be served or become servable: what invalidation acts on.
LIVE: frozenset[ModuleState] = frozenset({S.BUILDING, S.VALIDATING, S.PUBLISHED, S.STALE})


class IllegalTransitionError(CagError):
    status = Status.FAILED_PRECONDITION
    reason = "ILLEGAL_TRANSITION"


def check_transition(module_id: str, current: ModuleState, target: ModuleState) -> None:
    if target not in ALLOWED[current]:
        raise IllegalTransitionError(f"module {module_id} is {current.value}; it cannot become {target.value}")
