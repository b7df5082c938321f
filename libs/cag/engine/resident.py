"""The modules an engine holds, and the KV memory they and the running requests take.

The engine's KV memory is one preallocated, token-major arena ([layers, capacity, kv_heads, head_dim] for K
and V), allocated and touched once, so no request pays the page faults of fresh buffers. Each resident
module's rows occupy one row range of it, at the positions its chain gives them; requests attend over them in
place and get row ranges of their own for their suffix and answer. A module enters once (single flight:
requests that need it while it is being restored wait on the same restore), is `ready` only once verified,
and a restore that fails leaves nothing behind. A dropped module's rows are reused only after the last request
attending over them ended.
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


class RowRanges:
    """First-fit allocation of row ranges in [0, capacity); freed neighbours merge."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[tuple[int, int]] = [(0, capacity)] if capacity else []  # (start, length), by start

    @property
    def free(self) -> int:
        return sum(length for _, length in self._free)

    @property
    def largest(self) -> int:
        return max((length for _, length in self._free), default=0)

    def take(self, length: int) -> int | None:
        """The start of `length` free rows now taken, or None when no free range is that long."""
        if length == 0:
            return 0
        for i, (start, size) in enumerate(self._free):
            if size >= length:
                self._free[i : i + 1] = [(start + length, size - length)] if size > length else []
                return start
        return None

    def give(self, start: int, length: int) -> None:
        if length == 0:
            return
        self._free.append((start, length))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for begin, size in self._free:
            if merged and merged[-1][0] + merged[-1][1] == begin:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((begin, size))
        self._free = merged


@dataclass(eq=False, kw_only=True)
class ResidentModule:
    """One module's rows in the arena; `pending` until its restore is verified."""

    key: ModuleKey
    start: int  # first arena row
    memory: KVCache  # a view of the arena's rows [start, start + tokens)
    pending: PendingRestore | None
    users: int = 0  # running requests attending over it
    dropped: bool = False  # forgotten: its rows return to the arena when the last user ends

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
    """A request's chain in engine memory, its own rows, and what it had to restore itself."""

    modules: tuple[ResidentModule, ...]
    own: KVCache  # the request's own rows (a view of the arena)
    own_start: int
    reused_tokens: int  # tokens of modules that were ready when the request arrived
    restored_tokens: int  # tokens of modules not ready on arrival (restored by this request or one it waited for)
    restores: tuple[Callable[[], None], ...] = field(default=())  # restores this request must run
    awaited: tuple[PendingRestore, ...] = field(default=())  # the restores of modules not ready on arrival

    def rows(self) -> list[PrefixRows]:
        return [m.rows() for m in self.modules]

    def restore_seconds(self) -> float:
        """How long the slowest restore this request waited for took (0 when every module was resident)."""
        return max((p.seconds for p in self.awaited), default=0.0)


class ResidentSet:
    """Thread-safe: the arena, the modules resident in it, and the rows of running requests."""

    def __init__(self, shape: KVShape, capacity: int) -> None:
        self.shape = shape
        self.capacity = capacity
        self._lock = threading.Lock()
        self._arena: KVCache | None = None  # allocated on first use
        self._ranges = RowRanges(capacity)
        self._modules: dict[str, ResidentModule] = {}

    @property
    def free(self) -> int:
        with self._lock:
            return self._ranges.free

    @property
    def largest_free(self) -> int:
        """The longest run of free rows: the most one module or request can get now."""
        with self._lock:
            return self._ranges.largest

    def ready(self) -> dict[str, int]:
        with self._lock:
            return {m.key[0]: m.tokens for m in self._modules.values() if m.ready}

    def place(self, chain: Sequence[KVSource], *, own: int) -> Placement:
        """Every module of `chain` (root first) resident or entering, and `own` rows for the request.

        Missing modules get arena rows now; their restores are returned for the caller to run. KVCacheFullError,
        with nothing changed, when the new modules and `own` do not fit.
        """
        with self._lock:
            arena = self._memory()
            placed: dict[str, ResidentModule] = {}
            missing: list[KVSource] = []
            for source in chain:
                held = self._modules.get(source.metadata.module_id)
                if held is not None and held.key == module_key(source):
                    placed[held.key[0]] = held
                else:
                    missing.append(source)
            reused = sum(m.tokens for m in placed.values() if m.ready)
            starts = self._take_all([s.token_count for s in missing] + [own])
            restores = []
            for source, start in zip(missing, starts, strict=False):
                module = ResidentModule(
                    key=module_key(source),
                    start=start,
                    memory=arena.view(start, source.token_count),
                    pending=PendingRestore(self.shape.layers),
                )
                old = self._modules.get(module.key[0])
                if old is not None:  # the same id with other content: the old rows go once unused
                    self._forget(old)
                self._modules[module.key[0]] = placed[module.key[0]] = module
                restores.append(self._restore_job(module, source))
            modules = tuple(placed[s.metadata.module_id] for s in chain)
            for module in modules:
                module.users += 1
            awaited = tuple(m.pending for m in modules if not m.ready and m.pending is not None)
            return Placement(
                modules=modules,
                own=arena.view(starts[-1], own),
                own_start=starts[-1],
                reused_tokens=reused,
                restored_tokens=sum(m.tokens for m in modules) - reused,
                restores=tuple(restores),
                awaited=awaited,
            )

    def release(self, placement: Placement) -> None:
        """A request ended: its own rows return, and so do dropped modules it was the last to use."""
        with self._lock:
            self._ranges.give(placement.own_start, placement.own.capacity)
            for module in placement.modules:
                module.users -= 1
                if module.dropped and module.users == 0:
                    self._ranges.give(module.start, module.tokens)

    def drop(self, module_id: str) -> bool:
        """Forget a module; requests already attending over its rows keep them until they end."""
        with self._lock:
            module = self._modules.get(module_id)
            if module is None:
                return False
            self._forget(module)
            return True

    def clear(self) -> None:
        with self._lock:
            for module in list(self._modules.values()):
                self._forget(module)

    def _forget(self, module: ResidentModule) -> None:
        if self._modules.get(module.key[0]) is module:
            del self._modules[module.key[0]]
        if not module.dropped:
            module.dropped = True
            if module.users == 0:
                self._ranges.give(module.start, module.tokens)

    def _take_all(self, lengths: list[int]) -> list[int]:
        """Row ranges for every length, or none of them (KVCacheFullError)."""
        taken: list[int] = []
        for length in lengths:
            start = self._ranges.take(length)
            if start is None:
                for begin, size in zip(taken, lengths, strict=False):
                    self._ranges.give(begin, size)
                raise KVCacheFullError(
                    f"KV cache full: {sum(lengths)} tokens needed ({length} in one range), "
                    f"{self._ranges.free} of {self.capacity} free; drop modules first"
                )
            taken.append(start)
        return taken

    def _memory(self) -> KVCache:
        if self._arena is None:
            arena = KVCache(self.shape, self.capacity)
            # Touch every page now, so no request pays the page faults of fresh buffers.
            arena.k.zero_()
            arena.v.zero_()
            self._arena = arena
        return self._arena

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
                    self._forget(module)
                pending.finish(e)  # every forward pass waiting on these rows raises it
                return
            module.memory.length = module.tokens
            pending.finish()

        return run
