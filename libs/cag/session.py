"""Answering queries from a restored module chain: the query-time half of the layout contract."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

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
    tokenizer: PreTrainedTokenizerBase
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
            raise ModuleMismatchError("layout_hash", leaf.layout_hash, layout_hash(layout), module=leaf.module_id)
        model = resolve_model(leaf.model_name, models_dir)
        engine = engine or load_engine("torch", model, leaf.dtype)
        for m in modules:
            engine.identity.check(m.metadata, layout_hash=leaf.layout_hash)
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_path)
        return cls(
            model=model, engine=engine, tokenizer=tokenizer, prompt=PromptLayout(layout, tokenizer), modules=modules
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
    cache = ctx.engine.restore(chain, reserve=len(suffix) + sampling.max_new_tokens)
    yield from stream_answer(ctx.engine, cache, suffix, sampling, answer, started)


def answer_with_full_prefill(ctx: ChainContext, query: str, sampling: SamplingParams, answer: Answer) -> Iterator[int]:
    """The baseline: prefill module text and query together, as if no module existed."""
    prefix = [t for m in ctx.modules for t in m.token_ids()]
    started = time.perf_counter()
    suffix = ctx.prompt.suffix_tokens(query)
    # An empty cache with room for everything: prefix and query go through in one forward pass.
    cache = ctx.engine.prefill([], reserve=len(prefix) + len(suffix) + sampling.max_new_tokens)
    yield from stream_answer(ctx.engine, cache, prefix + suffix, sampling, answer, started)
