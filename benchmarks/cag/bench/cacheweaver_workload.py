"""The request stream of `cag bench cacheweaver`: overlapping evidence with temporal locality, and the oracle order.

Corpus: `TOPICS` support-knowledge topics of `CHUNKS_PER_TOPIC` chunks each, paragraphs written from templates
with seeded details (the engine's cost depends on token counts, not on what the text says; the text is still
plausible prose so that tokenization behaves as on real documents).

Requests come in bursts of related questions on one topic (`BURST` questions), and a burst returns to one of the
last `RECENT_TOPICS` topics with probability `LOCALITY`. A question's retriever scores its topic's chunks close
together (relevance falling by `RANK_STEP` per chunk, noise of `SCORE_NOISE`) beside a few chunks of other topics
(`DISTRACTORS`, a lower relevance): related questions get mostly the same top `K` chunks, in an order the noise
shuffles among near ties, as a real retriever's similarity scores do.

The oracle knows every order served so far in its run (the engine is sized never to evict any) and puts first the
longest sequence of retrieved chunks that is a served prefix: the most prompt the engine's prefix cache can hold
for that request. It is the best order per request in hindsight, not over the whole stream (an order chosen for
this request also shapes what later ones find).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

TOPICS = (
    ("shipping", "express delivery"),
    ("shipping", "carrier pickup"),
    ("shipping", "return label"),
    ("billing", "refund"),
    ("billing", "invoice correction"),
    ("billing", "payment retry"),
    ("api", "API key rotation"),
    ("api", "sandbox access"),
    ("catalog", "warranty claim"),
    ("catalog", "bulk order"),
    ("accounts", "corporate account"),
    ("accounts", "data export"),
)
CHUNKS_PER_TOPIC = 6
K = 4
BURST = (2, 6)  # questions per burst, inclusive
LOCALITY = 0.6
RECENT_TOPICS = 3
RANK_STEP = 0.03
SCORE_NOISE = 0.05
DISTRACTORS = 3
DISTRACTOR_RELEVANCE = 0.8
SENTENCES_PER_CHUNK = 16  # comfortably more than a chunk's tokens, which are then cut to the chunk length

_SENTENCES = (
    "{Subject} requests received before {hour}:00 {zone} are handled the same business day; later ones are "
    "picked up the next morning.",
    "Customers on the {plan} plan get {n} {subject} credits per month, and unused credits do not carry over.",
    "When a {subject} request fails with code {code}, wait {n} seconds before retrying and contact the {team} "
    "team after {m} failures.",
    "The {team} team reviews {subject} exceptions within {m} business days and answers by email with a case number.",
    "In {region}, {subject} follows local rules: orders above {amount} {currency} need a signed form first.",
    "{Subject} records are kept for {n} months and can be exported as CSV from the account settings page.",
    "A {subject} change made after day {day} of the month takes effect on the next billing cycle.",
    "Partners in the {plan} program may ask for a {subject} review once per quarter through the partner portal.",
    "Support agents confirm the order number and the email on file before discussing any {subject} details.",
    "If the {subject} status page shows a delay, the estimate shown at checkout no longer applies.",
)
_PLANS = ("Starter", "Growth", "Business", "Enterprise")
_TEAMS = ("operations", "finance", "platform", "customer care", "logistics")
_REGIONS = ("the European Union", "Canada", "Australia", "Japan", "the United Kingdom", "Brazil")
_CURRENCIES = ("EUR", "CAD", "AUD", "JPY", "GBP", "BRL")
_QUESTIONS = (
    "How long does a {subject} request take when it arrives late in the day?",
    "What should a customer do when a {subject} request keeps failing?",
    "Which plan includes the most {subject} credits?",
    "Who reviews {subject} exceptions, and how fast?",
    "Can {subject} records be exported, and for how long are they kept?",
    "When does a {subject} change take effect?",
)


@dataclass(frozen=True, kw_only=True)
class Chunk:
    chunk_id: str
    topic: int
    text: str


@dataclass(frozen=True, kw_only=True)
class Question:
    topic: int
    text: str
    retrieved: tuple[str, ...]  # the top K chunk ids, best score first: retrieval order


def corpus(seed: int) -> list[Chunk]:
    rng = random.Random(seed)
    return [
        Chunk(chunk_id=f"{domain}/{subject.replace(' ', '-')}#{part}", topic=t, text=_paragraph(rng, subject, part))
        for t, (domain, subject) in enumerate(TOPICS)
        for part in range(CHUNKS_PER_TOPIC)
    ]


def _paragraph(rng: random.Random, subject: str, part: int) -> str:
    details = {
        "subject": subject,
        "Subject": subject[0].upper() + subject[1:],
        "plan": rng.choice(_PLANS),
        "team": rng.choice(_TEAMS),
        "region": rng.choice(_REGIONS),
        "currency": rng.choice(_CURRENCIES),
    }
    sentences = []
    for _ in range(SENTENCES_PER_CHUNK):
        numbers = {
            "hour": rng.randint(9, 18),
            "zone": rng.choice(("UTC", "CET", "EST", "PST")),
            "n": rng.randint(2, 90),
            "m": rng.randint(2, 9),
            "code": rng.choice((409, 422, 429, 503)),
            "amount": rng.randrange(200, 5000, 50),
            "day": rng.randint(5, 25),
        }
        sentences.append(rng.choice(_SENTENCES).format(**details, **numbers))
    return f"## {details['Subject']}, part {part + 1}\n\n" + " ".join(sentences) + "\n\n"


def questions(chunks: Sequence[Chunk], count: int, seed: int) -> list[Question]:
    """`count` questions in bursts on recently asked topics, each with its retrieval-ordered top K."""
    rng = random.Random(seed)
    by_topic = [[c.chunk_id for c in chunks if c.topic == t] for t in range(len(TOPICS))]
    recent: list[int] = []
    asked: list[Question] = []
    while len(asked) < count:
        topic = rng.choice(recent) if recent and rng.random() < LOCALITY else rng.randrange(len(TOPICS))
        recent = [topic, *(t for t in recent if t != topic)][:RECENT_TOPICS]
        for _ in range(min(rng.randint(*BURST), count - len(asked))):
            asked.append(_question(rng, chunks, by_topic[topic], topic, len(asked)))
    return asked


def _question(rng: random.Random, chunks: Sequence[Chunk], own: Sequence[str], topic: int, index: int) -> Question:
    others = rng.sample([c.chunk_id for c in chunks if c.topic != topic], DISTRACTORS)
    scores = {chunk_id: 1.0 - RANK_STEP * rank + rng.gauss(0, SCORE_NOISE) for rank, chunk_id in enumerate(own)}
    scores |= {chunk_id: DISTRACTOR_RELEVANCE + rng.gauss(0, SCORE_NOISE) for chunk_id in others}
    top = sorted(scores, key=scores.__getitem__, reverse=True)[:K]
    subject = TOPICS[topic][1]
    text = rng.choice(_QUESTIONS).format(subject=subject)
    return Question(topic=topic, text=f"Question ({index}): {text}\nAnswer:", retrieved=tuple(top))


class ServedPrefixes:
    """Every prefix of the chunk orders served in one run: what an engine that never evicts holds in its
    prefix cache, at chunk granularity."""

    def __init__(self) -> None:
        self._prefixes: set[tuple[str, ...]] = set()

    def __len__(self) -> int:
        return len(self._prefixes)

    def add(self, order: Sequence[str]) -> None:
        self._prefixes.update(tuple(order[:n]) for n in range(1, len(order) + 1))

    def cached(self, order: Sequence[str]) -> int:
        """Leading chunks of `order` that are a served prefix."""
        return next((n for n in range(len(order), 0, -1) if tuple(order[:n]) in self._prefixes), 0)

    def deepest(self, retrieved: Sequence[str]) -> list[str]:
        """The longest served prefix made of retrieved chunks (a depth-first search over at most K! orders)."""
        best: list[str] = []

        def extend(path: list[str]) -> None:
            nonlocal best
            if len(path) > len(best):
                best = path
            for chunk_id in retrieved:
                if chunk_id not in path and (*path, chunk_id) in self._prefixes:
                    extend([*path, chunk_id])

        extend([])
        return best


class OracleOrder:
    """The order with the longest cached prefix given every order served before (see the module docstring)."""

    def __init__(self) -> None:
        self._served = ServedPrefixes()

    def order(self, chunk_ids: Sequence[str]) -> list[str]:
        head = self._served.deepest(chunk_ids)
        return head + [c for c in chunk_ids if c not in head]

    def served(self, chunk_ids: Sequence[str]) -> None:
        self._served.add(chunk_ids)
