"""The route rule an approved candidate adds: keywords drawn from its queries, so such queries take its route.

A keyword rule matches when any of its keywords occurs in the query (whole words, case-insensitive). A word
that only one of the candidate's queries uses would pull unrelated queries in, and a word every query of the
tenant uses ("what", "how") would pull them all: the keywords are the content words shared by at least half
of the representative queries, most shared first; with a single query, its content words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# Words that carry no topic: question words, auxiliaries, pronouns, articles, prepositions, conjunctions.
_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
    ours out over own same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with would
    you your yours get got need needs please tell know want
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
MAX_KEYWORDS = 5
MIN_WORD_CHARS = 3
MAX_RULE_ID = 64


def content_words(query: str) -> list[str]:
    """The query's topic words, casefolded, in order, each once."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.casefold()):
        if len(word) >= MIN_WORD_CHARS and word not in STOPWORDS and not word.isdigit():
            seen.setdefault(word)
    return list(seen)


def promotion_keywords(queries: Sequence[str], limit: int = MAX_KEYWORDS) -> tuple[str, ...]:
    """Keywords for the rule: content words in at least half of `queries` (most shared first, then first used)."""
    per_query = [content_words(q) for q in queries]
    shared = Counter(word for words in per_query for word in words)
    order = {word: i for i, word in enumerate(w for words in per_query for w in words)}
    needed = max(1, (len(per_query) + 1) // 2)
    ranked = sorted((w for w, n in shared.items() if n >= needed), key=lambda w: (-shared[w], order[w]))
    return tuple(ranked[:limit])


def promotion_rule_id(candidate_id: str) -> str:
    """A rule id the registry accepts ([a-z0-9][a-z0-9._-]*, at most 64 characters), one per candidate."""
    slug = re.sub(r"[^a-z0-9._-]", "-", candidate_id.casefold())
    return f"promoted-{slug}"[:MAX_RULE_ID]
