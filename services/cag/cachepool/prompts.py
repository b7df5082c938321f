"""Queries into suffix tokens: the layout named by a chain's leaf, bound to the tokenizer of the pool's model."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from cag.cachepool.core.snapshot import ModuleRecord
from cag.errors import InvalidFieldError, ModuleMismatchError
from cag.layout import Layout, PromptLayout, layout_hash, parse_layout

# A query longer than this is refused before it is tokenized (the layout's token limit is checked after).
MAX_QUERY_CHARS = 16_384


class PromptBook:
    """One PromptLayout per layout hash, built on first use (a pool serves few layouts)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._layouts: dict[str, PromptLayout] = {}
        self._paragraph_ends: dict[str, frozenset[tuple[int, ...]]] = {}

    def suffix_tokens(self, leaf: ModuleRecord, query: str) -> list[int]:
        """The query rendered into the leaf's layout (QueryError for an empty query, special-token text, or one
        longer than the layout allows)."""
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidFieldError("query", f"is {len(query):,} characters long; at most {MAX_QUERY_CHARS:,}")
        return self.layout_of(leaf).suffix_tokens(query)

    def layout_of(self, leaf: ModuleRecord) -> PromptLayout:
        prompt = self._layouts.get(leaf.layout_hash)
        if prompt is None:
            layout = parse_layout(leaf.layout, origin=f"the layout of module {leaf.module_id}")
            if layout_hash(layout) != leaf.layout_hash:
                raise ModuleMismatchError(
                    "layout_hash", layout_hash(layout), leaf.layout_hash, module=leaf.module_id,
                    expected_by="its layout hashes to",
                )  # fmt: skip
            prompt = self._layouts[leaf.layout_hash] = PromptLayout(layout, self._tokenizer)
        return prompt

    def evidence_tokens(
        self, layout_json: str, passages: Sequence[tuple[str, str]], query: str
    ) -> tuple[PromptLayout, list[int]]:
        """The whole prompt of an answer from evidence: one knowledge message (the layout's system text, then each
        (title, text) passage under the layout's document header), then the query's suffix. Rendered as a root
        module and its suffix, which concatenate to the full prompt (PromptLayout's invariant)."""
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidFieldError("query", f"is {len(query):,} characters long; at most {MAX_QUERY_CHARS:,}")
        prompt = self._bound(parse_layout(layout_json, origin="the request's layout"))
        layout = prompt.layout
        blocks = [f"{layout.document_header.format(title=title)}\n{text}" for title, text in passages]
        content = layout.document_separator.join([layout.system_text, *blocks])
        return prompt, prompt.module_tokens(content, is_root=True) + prompt.suffix_tokens(query)

    def _bound(self, layout: Layout) -> PromptLayout:
        key = layout_hash(layout)
        prompt = self._layouts.get(key)
        if prompt is None:
            prompt = self._layouts[key] = PromptLayout(layout, self._tokenizer)
        return prompt

    def paragraph_ends(self, leaf: ModuleRecord) -> frozenset[tuple[int, ...]]:
        """The token sequences that end an answer's first paragraph in the leaf's layout (tokenized once)."""
        ends = self._paragraph_ends.get(leaf.layout_hash)
        if ends is None:
            ends = self._paragraph_ends[leaf.layout_hash] = self.layout_of(leaf).paragraph_break_sequences()
        return ends

    def decode(self, leaf: ModuleRecord, token_ids: list[int]) -> str:
        return self.layout_of(leaf).decode(token_ids)
