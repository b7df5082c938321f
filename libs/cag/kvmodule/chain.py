"""Where a module's rows come from (`KVSource`), ordering a chain, and checking it fits an engine.

The file format hands out rows; engines decide where they go. Nothing here knows an engine's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

import torch

from cag.errors import ChainError, ModuleMismatchError
from cag.metadata import ModuleMetadata


class LayerRows(NamedTuple):
    """One layer of a module: k, v are [tokens, kv_heads, head_dim]."""

    layer: int
    k: torch.Tensor
    v: torch.Tensor


# Where layer i's rows go: two writable, contiguous [tokens, kv_heads, head_dim] tensors a source fills.
RowsTarget = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


class KVSource(Protocol):
    """A module's K/V rows, layer by layer (a file on disk, a verified copy in host RAM)."""

    @property
    def metadata(self) -> ModuleMetadata: ...

    @property
    def token_count(self) -> int: ...

    @property
    def in_memory(self) -> bool:
        """True when the rows already sit in host memory: reading them is a copy, not I/O."""
        ...

    def tokens(self) -> list[int]:
        """The token ids the rows stand for (what a prompt must start with to use them)."""
        ...

    def read_rows(self, into: RowsTarget | None = None) -> Iterator[LayerRows]:
        """Every layer's rows, in layer order; the iteration ends only once every byte is verified.

        With `into`, layer i's rows are written straight into `into(i)` (a disk read lands in the
        caller's buffers, no copy in between) and those tensors are yielded; without it the source
        yields tensors of its own. Rows are yielded before the checksum is known: a mismatch raises
        ModuleCorruptedError from the last step, so a consumer uses no row until the iteration ended.
        """
        ...


S = TypeVar("S", bound=KVSource)


@dataclass(frozen=True, kw_only=True)
class EngineIdentity:
    """What a module must have been built with to be restored into an engine."""

    model_name: str
    model_revision: str
    tokenizer_revision: str
    engine_fingerprint: str
    dtype: str
    # Fingerprints of other engines whose modules this one serves too (declared compatible pairs).
    also_accepts: frozenset[str] = frozenset()

    def check(
        self, meta: ModuleMetadata, *, layout_hash: str | None = None, layout_of: str = "the chain's leaf"
    ) -> None:
        """Raise ModuleMismatchError naming the first field that differs.

        `layout_hash`, when given, is the layout the module must share; `layout_of` says whose it is
        (the leaf of a queried chain, the layout being compiled) so the message names it.
        """
        expected = {
            "model_revision": self.model_revision,
            "tokenizer_revision": self.tokenizer_revision,
            "engine_fingerprint": self.engine_fingerprint,
            "dtype": self.dtype,
        }
        for field, want in expected.items():
            have = str(getattr(meta, field))
            if have != want and not (field == "engine_fingerprint" and have in self.also_accepts):
                raise ModuleMismatchError(field, want, have, module=meta.module_id)
        if layout_hash is not None and meta.layout_hash != layout_hash:
            raise ModuleMismatchError(
                "layout_hash", layout_hash, meta.layout_hash, module=meta.module_id, expected_by=f"{layout_of} has"
            )


def order_chain(modules: Sequence[S]) -> list[S]:
    """Root first, each child after its parent; every link is checked by id and chain hash."""
    if not modules:
        raise ChainError("no module given")
    _refuse_duplicates(modules)
    by_parent: dict[str | None, S] = {}
    for m in modules:
        if m.metadata.parent_id in by_parent:
            raise ChainError(f"two modules claim the same parent {m.metadata.parent_id!r}: not a single chain")
        by_parent[m.metadata.parent_id] = m
    if None not in by_parent:
        wanted = sorted({str(m.metadata.parent_id) for m in modules} - {m.metadata.module_id for m in modules})
        raise ChainError(f"the chain has no root: parent module(s) {', '.join(wanted)} must be given too")
    chain = [by_parent[None]]
    while len(chain) < len(modules):
        parent = chain[-1].metadata
        child = by_parent.get(parent.module_id)
        if child is None:
            stray = [m.metadata.module_id for m in modules if m not in chain]
            raise ChainError(f"module(s) {', '.join(stray)} do not descend from {parent.module_id}")
        if child.metadata.parent_chain_hash != parent.chain_hash:
            raise ModuleMismatchError(
                "parent_chain_hash",
                parent.chain_hash,
                str(child.metadata.parent_chain_hash),
                module=child.metadata.module_id,
                expected_by=f"its parent {parent.module_id} has chain_hash",
            )
        chain.append(child)
    return chain


def _refuse_duplicates(modules: Sequence[KVSource]) -> None:
    # Checked before linking: a module given twice would otherwise read as two siblings.
    seen: set[str] = set()
    for m in modules:
        module_id = m.metadata.module_id
        if module_id in seen:
            raise ChainError(f"module {module_id} was given twice: give each module of the chain once")
        seen.add(module_id)
