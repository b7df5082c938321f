"""The evaluation matrix's baselines: how each one answers one question and what it measures.

`cag`, `fallback_only` and the routing of `classifier_only` go through the running services (client → router →
cache pool or fallback); `rag`, `full_context` and the prefill of `classifier_only` run on an engine of the same
kind, model and dtype in this process (the cache pool serves module chains only), with the layout, the stop
sequences and the answer length the cache pool uses — so they pay no gRPC hop, which favours them slightly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cag.bench.evalset import NO_ROUTE, EvalQuestion
from cag.bench.matrix_metrics import Sample
from cag.canonical import Document, SourceBundle
from cag.client import CagClient, CagClientError, Sampling
from cag.engine import Engine, GenerateRequest, SamplingParams
from cag.layout import PromptLayout

MAX_NEW_TOKENS = 48  # as the compiler's golden questions: short factual answers
# Rendering a bundle never reads its root: the documents are already loaded.
_NOWHERE = Path(".")


@dataclass(frozen=True, kw_only=True)
class Knowledge:
    """The evaluation knowledge rendered in the layout: each source's module content (as a root module, with the
    system text) and its documents, and which route each source serves (NO_ROUTE for the long tail)."""

    prompt: PromptLayout
    contents: dict[str, str]  # source name → module content
    documents: dict[str, tuple[Document, ...]]
    route_of_source: dict[str, str]

    def source_of_route(self, route: str) -> str | None:
        return next((s for s, r in self.route_of_source.items() if r == route), None)

    def bundle_content(self, documents: Sequence[Document]) -> str:
        """Documents from any sources as one root module's content (system text, section and title headers)."""
        bundle = SourceBundle(root=_NOWHERE, documents=tuple(documents), tools=())
        return self.prompt.module_content(bundle, is_root=True)


@dataclass(frozen=True, kw_only=True)
class Timed:
    ttft_s: float
    latency_s: float
    answer: str


# ---------------------------------------------------------------- through the services


def ask_router(cag: CagClient, question: EvalQuestion, *, routed: bool = True) -> Sample:
    """`cag` (and `fallback_only`, asked as a tenant without modules, `routed` False): the router decides, the
    cache pool or the fallback service answers. The route is the decided one on the module path, NO_ROUTE on the
    fallback path; None when the baseline does not route."""
    began = time.perf_counter()
    first: float | None = None
    try:
        with cag.stream(question.question, sampling=Sampling(max_new_tokens=MAX_NEW_TOKENS)) as chunks:
            for _ in chunks:
                first = first or time.perf_counter()
            answer = chunks.answer
    except CagClientError as e:
        return _failed(question, f"{e.code.name}: {e.message}", route=NO_ROUTE if routed else None)
    ended = time.perf_counter()
    summary = answer.summary
    decided = answer.decision.route if answer.decision and summary.path == "module" else NO_ROUTE
    route = decided if routed else None
    return Sample(
        question_id=question.id,
        question_type=question.type.value,
        ttft_s=None if first is None else first - began,
        latency_s=ended - began,
        prefill_tokens=summary.prefill_tokens,
        answer=answer.text.strip(),
        correct=question.check.passes(answer.text),
        route=route,
        route_correct=None if route is None else route == question.route,
    )


def _failed(question: EvalQuestion, error: str, *, route: str | None) -> Sample:
    return Sample(
        question_id=question.id, question_type=question.type.value, ttft_s=None, latency_s=None, prefill_tokens=0,
        answer="", correct=False, route=route, route_correct=None if route is None else route == question.route,
        error=error,
    )  # fmt: skip


# ---------------------------------------------------------------- on the engine in this process


class PromptRunner:
    """Answers a whole prompt on the engine (an empty chain: every token prefilled), timed from `began`."""

    def __init__(self, engine: Engine, knowledge: Knowledge) -> None:
        self.engine = engine
        self.prompt = knowledge.prompt
        self.sampling = SamplingParams(
            max_new_tokens=MAX_NEW_TOKENS, stop_sequences=knowledge.prompt.paragraph_break_sequences()
        )

    def answer(self, tokens: list[int], began: float) -> Timed:
        first: float | None = None
        generated = []
        for event in self.engine.generate(GenerateRequest(chain=[], suffix=tokens, sampling=self.sampling)):
            first = first or time.perf_counter()
            generated.append(event.token_id)
        assert first is not None, "the engine produced no token"
        return Timed(ttft_s=first - began, latency_s=time.perf_counter() - began, answer=self.prompt.decode(generated))

    def sample(self, question: EvalQuestion, contents: Sequence[str], began: float, route: str | None) -> Sample:
        tokens = self.prompt.full_prompt_tokens(contents, question.question)
        timed = self.answer(tokens, began)
        return Sample(
            question_id=question.id,
            question_type=question.type.value,
            ttft_s=timed.ttft_s,
            latency_s=timed.latency_s,
            prefill_tokens=len(tokens),
            answer=timed.answer.strip(),
            correct=question.check.passes(timed.answer),
            route=route,
            route_correct=None if route is None else route == question.route,
        )


def full_context(runner: PromptRunner, knowledge: Knowledge) -> Callable[[EvalQuestion], Sample]:
    """All static text (every source, the long tail too) in every request's prompt; no routing."""
    ordered = list(knowledge.contents)
    contents = [knowledge.contents[ordered[0]]] + [_without_system(knowledge, s) for s in ordered[1:]]

    def ask(question: EvalQuestion) -> Sample:
        return runner.sample(question, contents, time.perf_counter(), route=None)

    return ask


def _without_system(knowledge: Knowledge, source: str) -> str:
    bundle = SourceBundle(root=_NOWHERE, documents=knowledge.documents[source], tools=())
    return knowledge.prompt.module_content(bundle, is_root=False)


def classifier_only(
    runner: PromptRunner, knowledge: Knowledge, explain: Callable[[str], str]
) -> Callable[[EvalQuestion], Sample]:
    """The router decides a route by its classifier alone (`explain`: the decided route, "" for none); the routed
    source's text is prefilled in the prompt; no route: the system text only."""

    def ask(question: EvalQuestion) -> Sample:
        began = time.perf_counter()
        route = explain(question.question) or NO_ROUTE
        source = knowledge.source_of_route(route) if route != NO_ROUTE else None
        contents = [knowledge.contents[source] if source else knowledge.prompt.layout.system_text]
        return runner.sample(question, contents, began, route=route)

    return ask


@dataclass(frozen=True, kw_only=True)
class Chunk:
    source: str
    document: Document


class ChunkIndex:
    """Traditional RAG's index: one chunk per document (they are a few hundred tokens at most), embedded once with
    MiniLM; a query is embedded and the top-k chunks by cosine similarity are returned, best first."""

    def __init__(self, embedder: Any, knowledge: Knowledge) -> None:
        self.embedder = embedder
        self.chunks = [Chunk(source=s, document=d) for s, docs in knowledge.documents.items() for d in docs]
        texts = [f"{c.document.title}\n{c.document.body}" for c in self.chunks]
        self.vectors = embedder.encode(texts, normalize_embeddings=True)  # [chunks, 384], unit length

    def search(self, query: str, k: int) -> list[Chunk]:
        q = self.embedder.encode([query], normalize_embeddings=True)[0]  # [384]
        scores = self.vectors @ q  # [chunks]: cosine similarities
        best = sorted(range(len(self.chunks)), key=lambda i: -float(scores[i]))[:k]
        return [self.chunks[i] for i in best]


def rag(runner: PromptRunner, knowledge: Knowledge, index: ChunkIndex, top_k: int) -> Callable[[EvalQuestion], Sample]:
    """Embed → search → prompt (the top-k chunks in the layout) → full prefill. Its route is the source of the best
    chunk (NO_ROUTE for the long tail): whether retrieval found the right domain first."""

    def ask(question: EvalQuestion) -> Sample:
        began = time.perf_counter()
        chunks = index.search(question.question, top_k)
        content = knowledge.bundle_content([c.document for c in chunks])
        return runner.sample(question, [content], began, route=knowledge.route_of_source[chunks[0].source])

    return ask
