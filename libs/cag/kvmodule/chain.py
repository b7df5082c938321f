"""Ordering a module chain and checking that it fits an engine, before any byte is restored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cag.engine.cache import KVCache
from cag.errors import ChainError, ModuleMismatchError
from cag.kvmodule.metadata import ModuleMetadata


class KVSource(Protocol):
    """Anything that can put a module's K/V rows into an engine cache (a file, a host-RAM copy)."""

    @property
    def metadata(self) -> ModuleMetadata: ...

    @property
    def token_count(self) -> int: ...

    def write_into(self, cache: KVCache, start: int, on_layer: Callable[[int], None] | None = None) -> None:
        """Fill cache rows [start, start + token_count) of every layer; `on_layer(i)` once layer i is in."""
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

    def check(self, meta: ModuleMetadata, *, layout_hash: str | None = None) -> None:
        """Raise ModuleMismatchError naming the first field that differs."""
        expected = {
            "model_revision": self.model_revision,
            "tokenizer_revision": self.tokenizer_revision,
            "engine_fingerprint": self.engine_fingerprint,
            "dtype": self.dtype,
        }
        if layout_hash is not None:
            expected["layout_hash"] = layout_hash
        for field, want in expected.items():
            have = str(getattr(meta, field))
            if have != want:
                raise ModuleMismatchError(field, want, have, module=meta.module_id)


def order_chain(modules: Sequence[S]) -> list[S]:
    """Root first, each child after its parent; every link is checked by id and chain hash."""
    if not modules:
        raise ChainError("no module given")
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
            )
        chain.append(child)
    return chain
