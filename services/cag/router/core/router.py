"""The order of decision: the route named in the request → metadata rules → keyword rules → the classifier →
fallback; then the ACL and the state of the chosen route's chain (a stale chain is answered by fallback, never
served). Pure and fast: no I/O, the rules precompiled (cag.router.core.rules)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cag.errors import InvalidFieldError, PermissionDeniedError
from cag.router.core.chains import Principal, RouteEntry, RouteStatus
from cag.router.core.decision import AnswerPath, Basis, Choice, Decision
from cag.router.core.hints import Hints
from cag.router.core.rules import RouteInfo, RuleSet


class Classifier(Protocol):
    """Scores a query against route descriptions: (route, score in [0, 1]) per described route."""

    def scores(self, query: str, routes: Sequence[RouteInfo]) -> Sequence[tuple[str, float]]: ...


@dataclass(frozen=True, kw_only=True)
class Ask:
    tenant_id: str
    query: str
    hints: Hints
    principal: Principal


class Router:
    """`classifier`: None leaves the classifier step out; it picks a route only at or above `threshold`."""

    def __init__(
        self,
        classifier: Classifier | None = None,
        *,
        threshold: float = 0.5,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.classifier = classifier
        self.threshold = threshold
        self._new_id = new_id

    def choose(self, ask: Ask, rules: RuleSet) -> Choice:
        """The route by the order of decision, before its chain is looked at."""
        if ask.hints.route:
            return Choice(route=ask.hints.route, basis=Basis.METADATA, why="route named in the request")
        match = rules.match(ask.hints.values, ask.query)
        if match is not None:
            basis = Basis.METADATA if match.by_metadata else Basis.RULE
            return Choice(
                route=match.rule.route, basis=basis, rule_id=match.rule.rule_id, why=f"rule {match.rule.rule_id}"
            )
        return self._classify(ask.query, rules)

    def _classify(self, query: str, rules: RuleSet) -> Choice:
        described = [info for info in rules.routes.values() if info.description]
        if self.classifier is None or not described:
            return Choice(route="", basis=Basis.NONE, confidence=0.0, why="no rule matched")
        route, score = max(self.classifier.scores(query, described), key=lambda pair: pair[1], default=("", 0.0))
        score = min(max(score, 0.0), 1.0)
        if not route or score < self.threshold:
            why = f"no rule matched and the classifier is not confident ({score:.2f} < {self.threshold:.2f})"
            return Choice(route="", basis=Basis.NONE, confidence=score, why=why)
        why = f"classifier {score:.2f} >= {self.threshold:.2f}"
        return Choice(route=route, basis=Basis.CLASSIFIER, confidence=score, why=why)

    def settle(self, ask: Ask, choice: Choice, rules: RuleSet, entry: RouteEntry | None) -> Decision:
        """The decision once the chosen route's snapshot entry is known (None: no route chosen).

        PermissionDeniedError when the chain holds a module the caller may not see (the message names the
        route, which the caller gave or its own tenant's rules chose, never a module); InvalidFieldError when
        the request named a route the tenant does not have."""
        if not choice.route:
            return self._fallback(ask, choice, rules, f"{choice.why}; serving fallback")
        assert entry is not None
        if entry.status is RouteStatus.ABSENT:
            if choice.rule_id == "" and choice.basis is Basis.METADATA and choice.route not in rules.routes:
                raise InvalidFieldError(
                    "metadata.route", f"names no route of tenant {ask.tenant_id!r}: {choice.route!r}"
                )
            return self._fallback(
                ask, choice, rules, f"{choice.why}: route {choice.route} has no published module; serving fallback"
            )
        if not entry.visible_to(ask.principal):
            raise PermissionDeniedError(f"route {choice.route!r} serves knowledge outside the caller's scope")
        if entry.status is RouteStatus.NOT_SERVABLE:
            return self._fallback(ask, choice, rules, f"{choice.why}: {entry.problem}; serving fallback")
        return Decision(
            decision_id=self._new_id(),
            tenant_id=ask.tenant_id,
            route=choice.route,
            chain=entry.chain,
            basis=choice.basis,
            rule_id=choice.rule_id,
            rule_version=rules.version,
            confidence=choice.confidence,
            path=AnswerPath.MODULE,
            reason=choice.why,
            priority=rules.priority(choice.route),
        )

    def _fallback(self, ask: Ask, choice: Choice, rules: RuleSet, reason: str) -> Decision:
        return Decision(
            decision_id=self._new_id(),
            tenant_id=ask.tenant_id,
            route=choice.route,
            chain=(),
            basis=Basis.NONE,
            rule_id="",
            rule_version=rules.version,
            confidence=choice.confidence,
            path=AnswerPath.FALLBACK,
            reason=reason,
            priority=rules.priority(choice.route) if choice.route else 1,
        )
