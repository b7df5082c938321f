"""The router's pure core: route decisions, ACL checks and the route snapshot; no transport, no torch."""

from cag.router.core.chains import ModuleLink, Principal, RouteEntry, RouteStatus, not_servable_reason
from cag.router.core.decision import AnswerPath, Basis, Choice, Decision
from cag.router.core.hints import HINT_KEYS, Hints, hints_of
from cag.router.core.router import Ask, Classifier, Router
from cag.router.core.rules import RouteInfo, RouteRule, RuleSet
from cag.router.core.snapshot import ModuleChanged, RouteKey, RouteSnapshot

__all__ = [
    "HINT_KEYS",
    "AnswerPath",
    "Ask",
    "Basis",
    "Choice",
    "Classifier",
    "Decision",
    "Hints",
    "ModuleChanged",
    "ModuleLink",
    "Principal",
    "RouteEntry",
    "RouteInfo",
    "RouteKey",
    "RouteRule",
    "RouteSnapshot",
    "RouteStatus",
    "Router",
    "RuleSet",
    "hints_of",
    "not_servable_reason",
]
