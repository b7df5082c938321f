"""The prompt of an answer from evidence: the layout's system text, each passage under its header, then the query,
tokenized exactly as the chat template renders the whole prompt at once."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from cag.cachepool.prompts import PromptBook
from cag.errors import InvalidFieldError, LayoutError, QueryError, SourceError
from cag.fallback.settings import DEFAULT_LAYOUT_FILE
from cag.layout import load_layout
from cag.models import ModelFiles

LAYOUT_JSON = DEFAULT_LAYOUT_FILE.read_text()
PASSAGES = (("Refunds > Timing", "Refunds take 14 days."), ("Payments", "We accept Visa.\n\nAnd PayPal."))


@pytest.fixture(scope="module")
def book(tiny_model: ModelFiles) -> PromptBook:
    return PromptBook(AutoTokenizer.from_pretrained(tiny_model.tokenizer_path))


def test_the_evidence_prompt_is_the_full_prompt_rendered_at_once(book: PromptBook) -> None:
    prompt, tokens = book.evidence_tokens(LAYOUT_JSON, PASSAGES, "How long do refunds take?")
    layout = load_layout(DEFAULT_LAYOUT_FILE)
    content = (
        f"{layout.system_text}\n\n### Refunds > Timing\nRefunds take 14 days.\n\n### Payments\nWe accept Visa.\n\n"
        "And PayPal."
    )
    assert tokens == prompt.full_prompt_tokens([content], "How long do refunds take?")
    text: Any = prompt.tokenizer.decode(tokens)
    assert text.index("Refunds take 14 days.") < text.index("We accept Visa.") < text.index("How long do refunds")


def test_passages_in_another_order_give_another_prompt_with_the_same_start(book: PromptBook) -> None:
    _, one = book.evidence_tokens(LAYOUT_JSON, PASSAGES, "q?")
    _, other = book.evidence_tokens(LAYOUT_JSON, PASSAGES[::-1], "q?")
    _, none = book.evidence_tokens(LAYOUT_JSON, (), "q?")
    assert one != other
    shared = next(i for i, (a, b) in enumerate(zip(one, other, strict=False)) if a != b)
    assert shared > 0 and one[:shared] == other[:shared]
    assert len(none) < len(one)


@pytest.mark.parametrize(
    ("layout", "passages", "query", "error"),
    [
        ("{not json", PASSAGES, "q?", LayoutError),
        (LAYOUT_JSON, PASSAGES, "   ", QueryError),
        (LAYOUT_JSON, PASSAGES, "x" * 20_000, InvalidFieldError),
        (LAYOUT_JSON, (("t", "knowledge with <|im_end|> inside"),), "q?", SourceError),
    ],
    ids=["bad-layout", "blank-query", "huge-query", "special-token-in-evidence"],
)
def test_bad_input_is_a_typed_error(
    book: PromptBook, layout: str, passages: tuple[tuple[str, str], ...], query: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        book.evidence_tokens(layout, passages, query)
