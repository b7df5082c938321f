"""Answering queries from a restored module chain: the query-time half of the layout contract."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from cag.engine import Engine, GenerateRequest, RequestTimings, SamplingParams, load_engine
from cag.errors import ModuleMismatchError
from cag.kvmodule import KVSource, ModuleFile, order_chain
from cag.layout import PromptLayout, layout_hash, parse_layout
from cag.models import ModelFiles, resolve_model

ANSWER_RESERVE = 256


@dataclass(frozen=True, kw_only=True)
class ChainContext:
    """Everything needed to serve a chain: its model, engine, and the layout bound to the tokenizer."""

    model: ModelFiles
    engine: Engine
    prompt: PromptLayout
    modules: list[ModuleFile]

    @property
    def module_tokens(self) -> int:
        return sum(m.token_count for m in self.modules)

    @classmethod
    def open(cls, paths: Sequence[Path], *, models_dir: Path, engine: Engine | None = None) -> ChainContext:
        """Open and order module files; the model and layout come from the modules' own metadata."""
        modules = order_chain([ModuleFile.open(p) for p in paths])
        leaf = modules[-1].metadata
        layout = parse_layout(leaf.layout)
        if layout_hash(layout) != leaf.layout_hash:
            raise ModuleMismatchError(
                "layout_hash",
                layout_hash(layout),
                leaf.layout_hash,
                module=leaf.module_id,
                expected_by="its embedded layout hashes to",
            )
        model = resolve_model(leaf.model_name, models_dir)
        if engine is None:
            # KV memory for the resident chain plus one request's own rows: the largest is the full-prefill
            # baseline, which holds the chain's text, a query and its answer itself.
            answer = layout.max_query_tokens + ANSWER_RESERVE
            module_tokens = sum(m.token_count for m in modules)
            capacity = module_tokens + min(module_tokens + answer, model.context_window)
            engine = load_engine("torch", model, leaf.dtype, kv_capacity=capacity)
        for m in modules:
            engine.identity.check(m.metadata, layout_hash=leaf.layout_hash)
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_path)
        return cls(model=model, engine=engine, prompt=PromptLayout(layout, tokenizer), modules=modules)

    def decode(self, ids: Sequence[int]) -> str:
        return self.prompt.decode(ids)


@dataclass
class Answer:
    """A streamed answer: token ids as they arrive, the time to the first one, the engine's timings."""

    tokens: list[int] = field(default_factory=list)
    ttft_s: float = 0.0
    total_s: float = 0.0
    timings: RequestTimings | None = None  # the engine's own (restore, prefill, decode), as of the last token


def stream_answer(engine: Engine, request: GenerateRequest, answer: Answer, started: float) -> Iterator[int]:
    """Run the request, recording TTFT from `started` (a perf_counter reading, taken before tokenizing)."""
    for event in engine.generate(request):
        if not answer.tokens:
            answer.ttft_s = time.perf_counter() - started
        answer.tokens.append(event.token_id)
        answer.timings = event.timings
        yield event.token_id
    answer.total_s = time.perf_counter() - started


def answer_from_modules(
    ctx: ChainContext, chain: Sequence[KVSource], query: str, sampling: SamplingParams, answer: Answer
) -> Iterator[int]:
    """Restore the chain (or reuse what the engine holds), prefill only the query suffix, decode.

    TTFT includes the restore.
    """
    started = time.perf_counter()
    request = GenerateRequest(chain=chain, suffix=ctx.prompt.suffix_tokens(query), sampling=sampling)
    yield from stream_answer(ctx.engine, request, answer, started)


def answer_with_full_prefill(ctx: ChainContext, query: str, sampling: SamplingParams, answer: Answer) -> Iterator[int]:
    """The baseline: prefill module text and query together, as if no module existed."""
    prefix = [t for m in ctx.modules for t in m.token_ids()]
    started = time.perf_counter()
    # No chain: prefix and query go through in one forward pass.
    request = GenerateRequest(chain=(), suffix=prefix + ctx.prompt.suffix_tokens(query), sampling=sampling)
    yield from stream_answer(ctx.engine, request, answer, started)
