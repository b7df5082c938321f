"""A tenant's route rules, compiled once per version so that matching a request costs a few dict lookups and
one precompiled regular expression per keyword rule."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# The request metadata keys a rule may condition on; "route" names a route outright and is no rule's condition.
RULE_KEYS = ("intent", "product_area", "workflow_state")


@dataclass(frozen=True, kw_only=True)
class RouteRule:
    """The first rule of a set whose conditions all hold picks `route`: every `metadata` entry present in the
    request (values compared case-insensitively), and at least one of `keywords` in the query when there are any."""

    rule_id: str
    route: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RouteInfo:
    route: str
    description: str = ""  # "" = the classifier never picks the route
    priority: int = 1  # the cache pool's eviction weight, 1 to 100


@dataclass(frozen=True)
class _Compiled:
    rule: RouteRule
    metadata: tuple[tuple[str, str], ...]  # casefolded (key, value) pairs
    keywords: re.Pattern[str] | None


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    """One pattern matching any keyword as whole words, case-insensitively; a phrase's words may be separated by
    any whitespace. None when there are no keywords."""
    words = [r"\s+".join(map(re.escape, k.split())) for k in keywords if k.strip()]
    if not words:
        return None
    # \w-lookarounds rather than \b: a keyword that starts or ends with punctuation ("c++") still needs a boundary.
    return re.compile(rf"(?<!\w)(?:{'|'.join(words)})(?!\w)", re.IGNORECASE)


_WORD = re.compile(r"\w+")


def _plain_words(keyword: str) -> tuple[str, ...] | None:
    """The keyword's casefolded words when it is words separated by whitespace; None when it holds anything else
    ("c++", "e-mail"), which is then matched by a regular expression."""
    words = tuple(keyword.casefold().split())
    return words if words and all(_WORD.fullmatch(w) for w in words) else None


class KeywordIndex:
    """Which keyword rule of a set matches a query first, in one pass over the query's words.

    A regular expression per rule costs a scan of the query per rule (over a millisecond for a few hundred rules);
    here plain keywords are word n-grams in one dict, so a query costs a lookup per (word, n-gram length).
    Matching is the same as `keyword_pattern`'s: whole words, case-insensitive, a phrase's words separated by
    whitespace only.
    """

    def __init__(self, keywords_by_rule: Sequence[Sequence[str]]) -> None:
        self._grams: dict[tuple[str, ...], int] = {}  # n-gram → the first rule that has it
        others: dict[int, list[str]] = {}
        for index, keywords in enumerate(keywords_by_rule):
            for keyword in keywords:
                words = _plain_words(keyword)
                if words is None:
                    others.setdefault(index, []).append(keyword)
                else:
                    self._grams.setdefault(words, index)
        self._lengths = sorted({len(g) for g in self._grams})
        self._patterns = [(i, p) for i, kws in sorted(others.items()) if (p := keyword_pattern(kws)) is not None]

    def first(self, query: str) -> int | None:
        """The index of the first rule with a keyword in `query`, or None."""
        text = query.casefold()
        tokens = list(_WORD.finditer(text))
        # Tokens share a run while only whitespace separates them: a phrase matches inside one run.
        runs, run = [], 0
        for i, token in enumerate(tokens):
            if i and not text[tokens[i - 1].end() : token.start()].isspace():
                run += 1
            runs.append(run)
        words = [t.group() for t in tokens]
        best: int | None = None
        for start in range(len(words)):
            for n in self._lengths:
                end = start + n
                if end > len(words) or runs[end - 1] != runs[start]:
                    break
                index = self._grams.get(tuple(words[start:end]))
                if index is not None and (best is None or index < best):
                    best = index
        for index, pattern in self._patterns:
            if best is not None and index >= best:
                break
            if pattern.search(query):
                return index
        return best


@dataclass(frozen=True, kw_only=True)
class RuleMatch:
    rule: RouteRule
    by_metadata: bool  # a rule with metadata conditions decides with basis METADATA, a keyword-only one with RULE


class RuleSet:
    """A tenant's rules and routes at one version (0: the tenant has none), compiled for matching."""

    def __init__(
        self, tenant_id: str, version: int, rules: Sequence[RouteRule] = (), routes: Sequence[RouteInfo] = ()
    ) -> None:
        self.tenant_id = tenant_id
        self.version = version
        self.rules = tuple(rules)
        self.routes = {info.route: info for info in routes}
        self._compiled = [
            _Compiled(
                rule=r,
                metadata=tuple((k.casefold(), v.casefold()) for k, v in sorted(r.metadata.items())),
                keywords=keyword_pattern(r.keywords),
            )
            for r in self.rules
        ]
        # Metadata rules are tried before keyword-only rules (the order of decision), each group in set order.
        self._by_metadata = [c for c in self._compiled if c.metadata]
        self._by_keywords = [c.rule for c in self._compiled if not c.metadata and c.keywords is not None]
        self._keywords = KeywordIndex([r.keywords for r in self._by_keywords])

    @classmethod
    def empty(cls, tenant_id: str) -> RuleSet:
        return cls(tenant_id, 0)

    def priority(self, route: str) -> int:
        info = self.routes.get(route)
        return info.priority if info is not None and info.priority > 0 else 1

    def match(self, hints: Mapping[str, str], query: str) -> RuleMatch | None:
        """The first metadata rule whose conditions all hold, else the first keyword rule that matches.

        `hints`: the request's metadata with casefolded keys and values."""
        for c in self._by_metadata:
            if all(hints.get(k) == v for k, v in c.metadata) and (c.keywords is None or c.keywords.search(query)):
                return RuleMatch(rule=c.rule, by_metadata=True)
        first = self._keywords.first(query)
        return None if first is None else RuleMatch(rule=self._by_keywords[first], by_metadata=False)
