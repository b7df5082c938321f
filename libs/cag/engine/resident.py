"""The modules an engine holds, and the KV memory they and the running requests take.

Each resident module's rows live once, in a buffer of their own, at the positions its chain gives it.
Requests attend over them in place and write only rows of their own. A module enters once (single flight:
requests that need it while it is being restored wait on the same restore) and only once verified is it
`ready`; a restore that fails leaves nothing behind. Memory is counted in tokens: modules (ready or being
restored) plus what running requests reserved for their suffix and answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cag.engine.cache import KVCache, KVShape, PendingRestore
from cag.engine.llama import PrefixRows
from cag.errors import KVCacheFullError
from cag.kvmodule.chain import KVSource

ModuleKey = tuple[str, str, str]  # module id, chain hash, tensor checksum: the rows' content


def module_key(source: KVSource) -> ModuleKey:
    meta = source.metadata
    return meta.module_id, meta.chain_hash, meta.tensor_checksum


@dataclass(eq=False, kw_only=True)
class ResidentModule:
    """One module's rows in engine memory; `pending` until its restore is verified."""

    key: ModuleKey
    memory: KVCache
    pending: PendingRestore | None
    restored_by: object  # the request (or load) that restores it: it reports the restore as its own

    @property
    def tokens(self) -> int:
        return self.memory.capacity

    @property
    def ready(self) -> bool:
        """Restored and verified (a failed restore never stays resident)."""
        return self.pending is None or self.pending.done

    def rows(self) -> PrefixRows:
        return PrefixRows(k=self.memory.k, v=self.memory.v, pending=self.pending)


@dataclass(frozen=True, kw_only=True)
class Placement:
    """A request's chain in engine memory: the rows to attend over and what it had to restore itself."""

    modules: tuple[ResidentModule, ...]
    reused_tokens: int  # tokens of modules that were ready when the request arrived
    restored_tokens: int  # tokens of modules restored (by this request or one it waited for)
    restores: tuple[Callable[[], None], ...] = field(default=())  # restores this request must run
    awaited: tuple[PendingRestore, ...] = field(default=())  # the restores of modules not ready on arrival

    def rows(self) -> list[PrefixRows]:
        return [m.rows() for m in self.modules]

    def restore_seconds(self) -> float:
        """How long the slowest restore this request waited for took (0 when every module was resident)."""
        return max((p.seconds for p in self.awaited), default=0.0)


class ResidentSet:
    """Thread-safe: the modules resident in an engine and the tokens reserved by its running requests."""

    def __init__(self, shape: KVShape, capacity: int) -> None:
        self.shape = shape
        self.capacity = capacity
        self._lock = threading.Lock()
        self._modules: dict[str, ResidentModule] = {}
        self._reserved = 0  # tokens held by running requests' own rows

    @property
    def used(self) -> int:
        with self._lock:
            return self._used()

    def _used(self) -> int:
        return sum(m.tokens for m in self._modules.values()) + self._reserved

    def ready(self) -> dict[str, int]:
        with self._lock:
            return {m.key[0]: m.tokens for m in self._modules.values() if m.ready}

    def place(self, chain: Sequence[KVSource], owner: object, *, extra: int) -> Placement:
        """Every module of `chain` (root first) resident or entering, and `extra` own tokens reserved.

        Missing modules get buffers now; their restores are returned for the caller to run (`owner` runs
        them). KVCacheFullError, with nothing changed, when the new modules and `extra` do not fit.
        """
        with self._lock:
            placed: list[ResidentModule] = []
            missing: list[KVSource] = []
            for source in chain:
                held = self._modules.get(source.metadata.module_id)
                if held is not None and held.key == module_key(source):
                    placed.append(held)
                else:
                    missing.append(source)
            needed = sum(s.token_count for s in missing) + extra
            free = self.capacity - self._used()
            if needed > free:
                raise KVCacheFullError(
                    f"KV cache full: {needed} tokens needed, {free} of {self.capacity} free; drop modules first"
                )
            reused = sum(m.tokens for m in placed if m.ready)
            restores = []
            for source in missing:
                module = ResidentModule(
                    key=module_key(source),
                    memory=KVCache(self.shape, source.token_count),
                    pending=PendingRestore(self.shape.layers),
                    restored_by=owner,
                )
                self._modules[source.metadata.module_id] = module
                restores.append(self._restore_job(module, source))
            self._reserved += extra
            by_id = {m.key[0]: m for m in placed} | {
                s.metadata.module_id: self._modules[s.metadata.module_id] for s in missing
            }
            modules = tuple(by_id[s.metadata.module_id] for s in chain)
            restored = sum(m.tokens for m in modules) - reused
            awaited = tuple(m.pending for m in modules if not m.ready and m.pending is not None)
            return Placement(
                modules=modules,
                reused_tokens=reused,
                restored_tokens=restored,
                restores=tuple(restores),
                awaited=awaited,
            )

    def release(self, extra: int) -> None:
        """Give back a request's own tokens."""
        with self._lock:
            self._reserved -= extra

    def drop(self, module_id: str) -> bool:
        """Forget a module; requests already attending over its rows keep them until they end."""
        with self._lock:
            return self._modules.pop(module_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._modules.clear()

    def _restore_job(self, module: ResidentModule, source: KVSource) -> Callable[[], None]:
        def run() -> None:
            pending = module.pending
            assert pending is not None
            try:
                for rows in source.read_rows(into=module.memory.rows_target(0, module.tokens)):
                    pending.layer_loaded(rows.layer)
            except BaseException as e:
                # Nothing half-restored stays: the module leaves before anyone else can find it unverified.
                with self._lock:
                    if self._modules.get(module.key[0]) is module:
                        del self._modules[module.key[0]]
                pending.finish(e)  # every forward pass waiting on these rows raises it
                return
            module.memory.length = module.tokens
            pending.finish()

        return run
