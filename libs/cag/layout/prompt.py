"""A layout bound to a model's chat template: module token ids and query suffixes that concatenate exactly.

A chain of knowledge modules is a list of chat messages (root first). Module i
owns the rendered text from just after the previous message's last boundary
token up to and including its own last boundary token. The boundary is a
special token, so tokenization never merges across it, and therefore

    module_tokens(m0) + module_tokens(m1) + ... + suffix_tokens(q) == full_prompt_tokens([m0, m1, ...], q)

At query time only the parents' token ids are known, never their text, so a
module's slice and the suffix are computed against fixed placeholder parents;
construction checks that the chat template makes them independent of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cag.canonical import SourceBundle
from cag.errors import LayoutError, QueryError, SourceError
from cag.layout.spec import Layout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Two unlike placeholders: if a slice differs between them, the template leaks parent text into it.
_PLACEHOLDERS = ("P", "Placeholder knowledge.\n\n- with a list\n")
_PROBE_CONTENTS = ("Root probe text.\n", " child probe: 1, 2, 3.\n")
_PROBE_QUERY = "\n probe query?"


class PromptLayout:
    """Renders knowledge modules and query suffixes of one layout with one tokenizer."""

    def __init__(self, layout: Layout, tokenizer: PreTrainedTokenizerBase) -> None:
        self.layout = layout
        self.tokenizer = tokenizer
        self.special_tokens = _special_tokens(tokenizer)
        if layout.boundary_token not in self.special_tokens:
            raise LayoutError(
                f"layout {layout.name}: boundary_token {layout.boundary_token!r} is not a special token "
                f"of this tokenizer (special tokens: {', '.join(sorted(self.special_tokens))})"
            )
        self._check_template()

    # -- knowledge ---------------------------------------------------------------------------

    def module_content(self, bundle: SourceBundle, *, is_root: bool) -> str:
        """The message content of a module compiled from `bundle`."""
        layout = self.layout
        blocks: list[str] = []
        if bundle.tools:
            tools = layout.tool_separator.join(tool.text for tool in bundle.tools)
            blocks.append(f"{layout.tools_header}\n{tools}")
        sections: dict[str, list[str]] = {}
        for doc in bundle.documents:
            header = layout.document_header.format(title=doc.title)
            sections.setdefault(doc.section, []).append(f"{header}\n{doc.body.rstrip(chr(10))}")
        for section, docs in sections.items():
            blocks.append(layout.section_header.format(section=section))
            blocks.extend(docs)
        body = layout.document_separator.join(blocks)
        return f"{layout.system_text}{layout.document_separator}{body}" if is_root else body

    def module_text(self, content: str, *, is_root: bool) -> str:
        """The rendered slice of the prompt that this module owns."""
        self._check_content(content)
        return self._module_text(content, parents=() if is_root else _PLACEHOLDERS[:1])

    def module_tokens(self, content: str, *, is_root: bool) -> list[int]:
        """Token ids of the module's slice (see `module_text`)."""
        return self._tokens(self.module_text(content, is_root=is_root))

    # -- queries -----------------------------------------------------------------------------

    def validate_query(self, query: str) -> None:
        """Raise QueryError when `query` cannot be placed into the prompt."""
        if not query.strip():
            raise QueryError("the query is empty")
        reserved = sorted(token for token in self.special_tokens if token in query)
        if reserved:
            raise QueryError(f"the query contains reserved special token(s) {', '.join(reserved)}; remove them")

    def suffix_text(self, query: str) -> str:
        """The rendered prompt after the last module: the user turn and the generation prompt."""
        self.validate_query(query)
        return self._suffix_text(query, knowledge=_PLACEHOLDERS[:1])

    def suffix_tokens(self, query: str) -> list[int]:
        """Token ids of the suffix, tokenized as one string so the query merges as in the full prompt."""
        tokens = self._tokens(self.suffix_text(query))
        if len(tokens) > self.layout.max_query_tokens:
            raise QueryError(
                f"the query is too long: its suffix is {len(tokens)} tokens, "
                f"the layout {self.layout.name} allows {self.layout.max_query_tokens}"
            )
        return tokens

    def paragraph_break_sequences(self) -> frozenset[tuple[int, ...]]:
        """Token sequences of a blank line, alone and inside text: a stop condition for one-paragraph answers."""
        alone = tuple(self._tokens("\n\n"))
        inside = self._tokens("a.\n\nb")
        prefix, suffix = len(self._tokens("a.")), len(self._tokens("b"))
        return frozenset({alone, tuple(inside[prefix : len(inside) - suffix])})

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text of generated token ids, special tokens dropped."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        assert isinstance(text, str)
        return text

    def full_prompt_tokens(self, contents: Sequence[str], query: str) -> list[int]:
        """The reference: the whole prompt rendered by the chat template and tokenized at once."""
        return self._tokens(self._render([*contents], query=query))

    # -- internals ---------------------------------------------------------------------------

    def _messages(self, contents: Sequence[str], query: str | None) -> list[dict[str, str]]:
        messages = [{"role": self.layout.knowledge_role, "content": content} for content in contents]
        if query is not None:
            messages.append(
                {
                    "role": "user",
                    "content": self.layout.query_template.format(query=query),
                }
            )
        return messages

    def _render(self, contents: Sequence[str], *, query: str | None = None) -> str:
        rendered = self.tokenizer.apply_chat_template(
            self._messages(contents, query),
            tokenize=False,
            add_generation_prompt=query is not None,
        )
        return str(rendered)

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cut(self, rendered: str) -> int:
        """The offset right after the last boundary token."""
        at = rendered.rfind(self.layout.boundary_token)
        if at < 0:
            token = self.layout.boundary_token
            raise LayoutError(f"layout {self.layout.name}: the chat template never emits boundary_token {token!r}")
        return at + len(self.layout.boundary_token)

    def _prefix_end(self, parents: Sequence[str], rendered: str) -> int:
        """Where the parents' part ends in `rendered`, checking the template is prefix-stable."""
        if not parents:
            return 0
        before = self._render(parents)
        start = self._cut(before)
        if not rendered.startswith(before[:start]):
            raise LayoutError(
                f"layout {self.layout.name}: the chat template is not prefix-stable "
                "(adding a message rewrites the text rendered for earlier ones)"
            )
        return start

    def _module_text(self, content: str, *, parents: Sequence[str]) -> str:
        rendered = self._render([*parents, content])
        start = self._prefix_end(parents, rendered)
        end = self._cut(rendered)
        if end <= start:
            raise LayoutError(f"layout {self.layout.name}: the chat template emits no boundary token after a message")
        return rendered[start:end]

    def _suffix_text(self, query: str, *, knowledge: Sequence[str]) -> str:
        rendered = self._render(knowledge, query=query)
        return rendered[self._prefix_end(knowledge, rendered) :]

    def _check_content(self, content: str) -> None:
        # A special token inside knowledge would fake a turn and move the module cut.
        reserved = sorted(token for token in self.special_tokens if token in content)
        if reserved:
            raise SourceError(f"knowledge text contains reserved special token(s) {', '.join(reserved)}")

    def _check_template(self) -> None:
        """Prove on probes that slices ignore parent text and depth and concatenate to the full prompt."""
        name = self.layout.name
        one, two = _PLACEHOLDERS
        root, child = _PROBE_CONTENTS
        if len({self._module_text(child, parents=p) for p in ([one], [two], [two, one])}) != 1:
            raise LayoutError(f"layout {name}: with this chat template a module's text depends on its parents")
        if len({self._suffix_text(_PROBE_QUERY, knowledge=k) for k in ([one], [two], [two, one])}) != 1:
            raise LayoutError(f"layout {name}: with this chat template the query suffix depends on the knowledge")
        pieces = (
            self.module_tokens(root, is_root=True)
            + self.module_tokens(child, is_root=False)
            + self._tokens(self._suffix_text(_PROBE_QUERY, knowledge=[one]))
        )
        if pieces != self.full_prompt_tokens([root, child], _PROBE_QUERY):
            raise LayoutError(
                f"layout {name}: module and suffix tokens do not concatenate to the full prompt's tokens "
                f"(does {self.layout.boundary_token!r} strip whitespace next to it?)"
            )


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> frozenset[str]:
    """The named special tokens plus every added token flagged special (SmolLM2 has 17)."""
    named = set(tokenizer.all_special_tokens)
    added = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return frozenset(named | added)
