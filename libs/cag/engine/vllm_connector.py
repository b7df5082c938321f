"""The platform's vLLM KV connector: restores module chains into vLLM's paged KV memory, hands new modules' rows out.

vLLM builds two instances of the connector itself (loaded by `kv_connector_module_path`): a scheduler side and
a worker side. Both find the engine that owns them through a `Directory` named in `kv_connector_extra_config`
(one per VLLMEngine; both sides live in the engine's process, `VLLM_ENABLE_V1_MULTIPROCESSING=0`). A request
names its plan by a key in `kv_transfer_params`; the plan holds the chain's token ids and its sources (the
cache pool's host-tier copies, or module files) and, for a compile, the positions whose rows to hand back.

Scheduler side: a request whose prompt starts with its chain's token ids gets those tokens reported as
externally matched (never the prompt's last token: vLLM must compute at least one), loaded synchronously in
the step that schedules it. Worker side: each module's rows go into the allocated blocks with one vectorized
write per layer in the backend's page layout (`kv_pages`). A load that raises or fails its checksum reports
its blocks through `get_block_ids_with_load_errors`; with `kv_load_failure_policy="recompute"` vLLM then
computes those tokens itself, so bad KV is never used, and the plan's report tells the engine what failed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.model_executor.models.utils import extract_layer_index

from cag.engine.kv_pages import PageLayout, Slots, layout_for
from cag.kvmodule.chain import KVSource

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

PLAN_KEY = "cag_plan"  # the kv_transfer_params entry naming a request's plan
DIRECTORY_KEY = "cag_directory"  # the kv_connector_extra_config entry naming the engine's directory


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a request asks of the connector: restore `sources` (root first, tokens `chain_tokens`), and for a
    compile, hand back the rows of positions [save_begin, save_end) once they are computed."""

    chain_tokens: tuple[int, ...] = ()
    sources: tuple[KVSource, ...] = ()
    save_range: tuple[int, int] | None = None


@dataclass(kw_only=True)
class LoadReport:
    """What the worker did for one plan, read by the engine once the request's first token is out."""

    restored_tokens: int = 0
    restore_s: float = 0.0
    error: BaseException | None = None
    blocks: tuple[int, ...] = ()  # the blocks the restore wrote (to take the chain out of the prefix cache)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    report: LoadReport | None  # None: nothing was restored (no chain, or vLLM's prefix cache held all of it)
    saved: tuple[torch.Tensor, torch.Tensor] | None  # the save range's rows, for a compile
    cached: dict[int, tuple[int, object]]


@dataclass(kw_only=True)
class Directory:
    """The plans an engine gave its connector and what became of them; shared by both sides and the engine."""

    plans: dict[str, Plan] = field(default_factory=dict)
    reports: dict[str, LoadReport] = field(default_factory=dict)
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # [layers, T, H, D]
    # Full blocks a restore filled, as vLLM's prefix cache now holds them: block index -> (block id, block hash).
    cached: dict[str, dict[int, tuple[int, object]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, plan: Plan) -> str:
        key = f"plan-{next(_plan_numbers)}"
        with self.lock:
            self.plans[key] = plan
        return key

    def outcome(self, key: str) -> Outcome:
        """What became of the plan so far."""
        with self.lock:
            return Outcome(report=self.reports.get(key), saved=self.saved.get(key), cached=self.cached.get(key, {}))

    def close(self, key: str) -> Outcome:
        """Forget the plan; what became of it."""
        with self.lock:
            self.plans.pop(key, None)
            return Outcome(
                report=self.reports.pop(key, None), saved=self.saved.pop(key, None), cached=self.cached.pop(key, {})
            )

    def plan(self, key: str) -> Plan | None:
        with self.lock:
            return self.plans.get(key)

    def report(self, key: str, report: LoadReport) -> None:
        with self.lock:
            if key in self.plans:  # a plan closed meanwhile (the request was abandoned) keeps nothing
                self.reports[key] = report

    def save(self, key: str, rows: tuple[torch.Tensor, torch.Tensor]) -> None:
        with self.lock:
            if key in self.plans:
                self.saved[key] = rows

    def failed(self, key: str) -> bool:
        with self.lock:
            report = self.reports.get(key)
            return report is not None and report.error is not None


_plan_numbers = itertools.count()
_directories: dict[str, Directory] = {}
_directory_numbers = itertools.count()


def open_directory() -> tuple[str, Directory]:
    name = f"directory-{next(_directory_numbers)}"
    _directories[name] = directory = Directory()
    return name, directory


def close_directory(name: str) -> None:
    _directories.pop(name, None)


# ----------------------------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class LoadOrder:
    key: str
    begin: int  # positions [begin, end) of the request come from its chain
    end: int
    block_ids: tuple[int, ...]


@dataclass(frozen=True)
class SaveOrder:
    key: str
    begin: int
    end: int
    block_ids: tuple[int, ...]


@dataclass
class ModuleConnectorMetadata(KVConnectorMetadata):  # type: ignore[misc]
    # Small and picklable: keys, positions and block ids, never tensors.
    loads: list[LoadOrder] = field(default_factory=list)
    saves: list[SaveOrder] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- connector


class ModuleConnector(KVConnectorBase_V1):  # type: ignore[misc]
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._block_size = int(vllm_config.cache_config.block_size)
        name = self._kv_transfer_config.get_from_extra_config(DIRECTORY_KEY, None)
        if name not in _directories:
            raise RuntimeError(f"ModuleConnector needs {DIRECTORY_KEY} naming an open directory, not {name!r}")
        self._directory = _directories[name]
        # Scheduler side.
        self._loads: dict[str, tuple[str, int]] = {}  # request id -> (plan key, external tokens)
        self._saves: dict[str, tuple[str, int, int]] = {}  # request id -> (plan key, begin, end), until saved
        # Worker side.
        self._caches: dict[int, list[torch.Tensor]] = {}  # layer index -> its KV memory (one per attention layer)
        self._layout: PageLayout | None = None
        self._bad_blocks: set[int] = set()

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a best-effort cache: nothing is handed off when a request ends

    # ------------------------------------------------------------------------------------ scheduler side

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        plan, key = self._plan_of(request)
        if plan is None or not plan.chain_tokens or self._directory.failed(key):
            return 0, False
        n = len(plan.chain_tokens)
        if tuple(request.prompt_token_ids[:n]) != plan.chain_tokens:
            return 0, False
        return max(0, min(n, request.num_tokens - 1) - num_computed_tokens), False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        plan, key = self._plan_of(request)
        if plan is None:
            return
        if num_external_tokens > 0:
            self._loads[request.request_id] = (key, num_external_tokens)
        if plan.save_range is not None:
            self._saves[request.request_id] = (key, *plan.save_range)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = ModuleConnectorMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            self._order(meta, new.req_id, new.num_computed_tokens, scheduled[new.req_id], tuple(new.block_ids[0]))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            # A request resumed after preemption was asked for its chain again and lists all its blocks.
            new_blocks = cached.new_block_ids[i] if req_id in cached.resumed_req_ids else None
            blocks = tuple(new_blocks[0]) if new_blocks is not None else None
            self._order(meta, req_id, cached.num_computed_tokens[i], scheduled[req_id], blocks)
        return meta

    def _order(
        self, meta: ModuleConnectorMetadata, req_id: str, computed: int, scheduled: int, blocks: tuple[int, ...] | None
    ) -> None:
        if (load := self._loads.pop(req_id, None)) is not None and blocks is not None:
            key, external = load
            meta.loads.append(LoadOrder(key, computed - external, computed, blocks))
            self._note_cached(key, computed - external, computed, blocks)
        save = self._saves.get(req_id)
        if save is not None and computed + scheduled >= save[2]:
            del self._saves[req_id]
            if blocks is None or len(blocks) * self._block_size < save[2]:
                assert self._kv_cache_manager is not None  # bound by the scheduler before the first step
                blocks = tuple(self._kv_cache_manager.get_block_ids(req_id)[0])
            meta.saves.append(SaveOrder(save[0], save[1], save[2], blocks))

    def _note_cached(self, key: str, begin: int, end: int, blocks: tuple[int, ...]) -> None:
        """The full blocks of a sync load enter vLLM's prefix cache as it is scheduled: remember their hashes, so
        the engine can tell later whether they are still there (or evicted and reused)."""
        assert self._kv_cache_manager is not None
        pool = self._kv_cache_manager.block_pool
        entries = {}
        for index in range(begin // self._block_size, end // self._block_size):
            block = pool.blocks[blocks[index]]
            if block.block_hash is not None:
                entries[index] = (block.block_id, block.block_hash)
        with self._directory.lock:
            if key in self._directory.plans:
                self._directory.cached[key] = entries

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._loads.pop(request.request_id, None)
        self._saves.pop(request.request_id, None)
        return False, None

    def _plan_of(self, request: Request) -> tuple[Plan | None, str]:
        key = str((request.kv_transfer_params or {}).get(PLAN_KEY, ""))
        return self._directory.plan(key), key

    # ------------------------------------------------------------------------------------ worker side

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        forward_context = self._vllm_config.compilation_config.static_forward_context
        for name, cache in kv_caches.items():
            self._caches.setdefault(extract_layer_index(name), []).append(cache)
            layer = forward_context[name]
            backend = layer.attn_backend.get_name()
            layout = layout_for(backend, _cpu_kernel(cache, self._block_size, layer) if backend == "CPU_ATTN" else None)
            if self._layout is not None and type(layout) is not type(self._layout):
                raise RuntimeError("attention layers with different KV page layouts: modules cannot be restored")
            self._layout = layout

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, ModuleConnectorMetadata)
        for order in meta.loads:
            self._load(order)

    def _load(self, order: LoadOrder) -> None:
        began = time.perf_counter()
        slots = Slots(order.block_ids, order.begin, order.end, self._block_size)
        report = LoadReport(restored_tokens=order.end - order.begin, blocks=tuple(sorted(slots.block_ids())))
        try:
            plan = self._directory.plan(order.key)
            if plan is None:
                raise LookupError(f"{order.key} was closed before its restore ran")
            self._restore(plan, order)
        except Exception as e:  # a connector must never take the engine down: vLLM recomputes these blocks
            log.warning("module restore failed, vLLM recomputes %d tokens: %s", order.end - order.begin, e)
            report.error = e
            self._bad_blocks |= slots.block_ids()
        report.restore_s = time.perf_counter() - began
        self._directory.report(order.key, report)

    def _restore(self, plan: Plan, order: LoadOrder) -> None:
        """Every module overlapping [begin, end): each layer's rows in one write; raises on a bad checksum."""
        assert self._layout is not None
        start = 0
        for source in plan.sources:
            first, last = max(order.begin, start), min(order.end, start + source.token_count)
            if first < last:
                slots = Slots(order.block_ids, first, last, self._block_size)
                for layer in source.read_rows():  # the iteration ends only once every byte verified
                    k, v = layer.k[first - start : last - start], layer.v[first - start : last - start]
                    for cache in self._caches.get(layer.layer, []):
                        self._layout.write(cache, slots, k, v)
            start += source.token_count

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are synchronous: done before the forward pass starts

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # rows are read once the whole step is done (wait_for_save)

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, ModuleConnectorMetadata)
        assert self._layout is not None
        for order in meta.saves:
            slots = Slots(order.block_ids, order.begin, order.end, self._block_size)
            rows = [self._layout.read(self._caches[i][0], slots) for i in sorted(self._caches)]
            k = torch.stack([r[0] for r in rows]).cpu()
            v = torch.stack([r[1] for r in rows]).cpu()
            self._directory.save(order.key, (k, v))

    def get_block_ids_with_load_errors(self) -> set[int]:
        bad, self._bad_blocks = self._bad_blocks, set()
        return bad


def _cpu_kernel(cache: torch.Tensor, block_size: int, layer: Any) -> str:
    """The CPU attention kernel that packs this layer's pages (vLLM picks it from dtype, block size, head size)."""
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return str(_get_attn_isa(cache.dtype, block_size, cache.shape[-1] // 2, getattr(layer, "kv_cache_dtype", None)))
