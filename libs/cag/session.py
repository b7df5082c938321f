"""Answering queries from a restored module chain: the query-time half of the layout contract."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from cag.engine import Engine, KVCache, SamplingParams, load_engine
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
    scratch: KVCache  # preallocated once, reused by every query of this context

    @property
    def module_tokens(self) -> int:
        return sum(m.token_count for m in self.modules)

    def cache_for(self, tokens: int) -> KVCache:
        """The scratch cache, emptied, when `tokens` fit in it; otherwise a fresh one."""
        if tokens <= self.scratch.capacity:
            self.scratch.truncate(0)
            return self.scratch
        return self.engine.prefill([], reserve=tokens)

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
        engine = engine or load_engine("torch", model, leaf.dtype)
        for m in modules:
            engine.identity.check(m.metadata, layout_hash=leaf.layout_hash)
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_path)
        capacity = sum(m.token_count for m in modules) + layout.max_query_tokens + ANSWER_RESERVE
        return cls(
            model=model,
            engine=engine,
            prompt=PromptLayout(layout, tokenizer),
            modules=modules,
            scratch=engine.new_cache(min(capacity, engine.context_window)),
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.prompt.decode(ids)


@dataclass
class Answer:
    """A streamed answer: token ids as they arrive and the time to the first one."""

    tokens: list[int] = field(default_factory=list)
    ttft_s: float = 0.0
    total_s: float = 0.0


def stream_answer(
    engine: Engine, cache: KVCache, suffix: Sequence[int], sampling: SamplingParams, answer: Answer, started: float
) -> Iterator[int]:
    """Generate on top of `cache`, recording TTFT from `started` (a perf_counter reading)."""
    for token in engine.generate(suffix, cache, sampling):
        if not answer.tokens:
            answer.ttft_s = time.perf_counter() - started
        answer.tokens.append(token)
        yield token
    answer.total_s = time.perf_counter() - started


def answer_from_modules(
    ctx: ChainContext, chain: Sequence[KVSource], query: str, sampling: SamplingParams, answer: Answer
) -> Iterator[int]:
    """Restore the chain, prefill only the query suffix, decode. TTFT includes the restore."""
    started = time.perf_counter()
    suffix = ctx.prompt.suffix_tokens(query)
    # Disk reads overlap the query's forward pass; host-RAM copies are too quick to be worth a thread
    # (and a second thread of torch kernels would fight the forward pass for the cores).
    from_disk = all(isinstance(m, ModuleFile) for m in chain)
    reserve = len(suffix) + sampling.max_new_tokens
    cache = ctx.engine.restore(chain, reserve=reserve, into=ctx.scratch, overlap=from_disk)
    yield from stream_answer(ctx.engine, cache, suffix, sampling, answer, started)


def answer_with_full_prefill(ctx: ChainContext, query: str, sampling: SamplingParams, answer: Answer) -> Iterator[int]:
    """The baseline: prefill module text and query together, as if no module existed."""
    prefix = [t for m in ctx.modules for t in m.token_ids()]
    started = time.perf_counter()
    suffix = ctx.prompt.suffix_tokens(query)
    # An empty cache with room for everything: prefix and query go through in one forward pass.
    cache = ctx.cache_for(len(prefix) + len(suffix) + sampling.max_new_tokens)
    yield from stream_answer(ctx.engine, cache, prefix + suffix, sampling, answer, started)
