"""The router's decision for one request: what picked the route, which chain serves it, and which path answers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cag.router.core.chains import ModuleLink


class Basis(StrEnum):
    """What decided the route, in the order of decision."""

    METADATA = "metadata"  # the request named the route, or a metadata rule matched
    RULE = "rule"  # a keyword rule matched
    CLASSIFIER = "classifier"  # the classifier, at or above its threshold
    NONE = "none"  # nothing matched confidently, or the chain is not servable: fallback


class AnswerPath(StrEnum):
    MODULE = "module"
    FALLBACK = "fallback"


@dataclass(frozen=True, kw_only=True)
class Choice:
    """The route picked before its chain is looked at ("" = none)."""

    route: str
    basis: Basis
    rule_id: str = ""
    confidence: float = 1.0
    why: str  # how it was picked, for the decision's reason ("rule billing-kw", "classifier 0.82 >= 0.50")


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Audited for every request (cag.route.decided, id `decision_id`); sent first on every Generate stream."""

    decision_id: str
    tenant_id: str
    route: str  # "" when nothing matched
    chain: tuple[ModuleLink, ...]  # what the cache pool loads, root first; empty on the fallback path
    basis: Basis
    rule_id: str  # the matching rule (basis RULE or METADATA by a rule); "" otherwise
    rule_version: int  # the version of the tenant's rule set the decision was made with
    confidence: float  # 1.0 for metadata and rules, the classifier's score otherwise
    path: AnswerPath
    reason: str
    priority: int = 1  # the route's weight in the cache pool's eviction

    @property
    def module_ids(self) -> tuple[str, ...]:
        return tuple(link.module_id for link in self.chain)

    @property
    def module_version(self) -> int:
        """The leaf module's registry version; 0 on the fallback path."""
        return self.chain[-1].version if self.chain else 0
