"""The cache pool: modules moved between the origin, the local disk, host RAM and the engine, as the residency
core decides, each copy verified on entering its tier.

Every bookkeeping step runs on the event loop (the residency core takes no locks); file copies and
verification run on worker threads. Loads are single flight: concurrent requests for a module share one load
into each tier. A copy that fails verification is discarded, the module is quarantined in the registry, and
the request is served from its origin file, which the engine verifies as it restores it, or fails with
DATA_LOSS: bad KV is never attended over.

A module found in a slower tier is copied into host RAM, and kept in the engine after its request, only where
the promotion rule grants it (hits in the last 15 minutes, the route's confidence) and, for host RAM, the
eviction policy admits it there; system and tool parents (public roots) are pinned as they enter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from cag.cachepool.core import ModuleSpec, Promotion, PromotionRule, Residency, ResidentModule, Tier, TierFullError
from cag.cachepool.core.errors import UnknownModuleError
from cag.cachepool.core.snapshot import (
    ModuleRecord,
    RegistrySnapshot,
    StateChange,
    check_chain,
    check_module_ids,
    check_visible,
)
from cag.cachepool.tiers import DiskTier, open_checked, ram_copy
from cag.engine import GenerateRequest, KVShape, TokenEvent
from cag.errors import CagError, ModuleCorruptedError, ModuleMismatchError, ModuleNotServableError
from cag.kvmodule import EngineIdentity, KVSource, LayerRows, LoadedModule, ModuleFile, RowsTarget
from cag.metadata import ModuleMetadata

log = logging.getLogger(__name__)
T = TypeVar("T")

# A copy that fails its checks: its bytes or its header differ from what the registry published.
BAD_COPY = (ModuleCorruptedError, ModuleMismatchError)
TIER_NAMES = {
    Tier.ENGINE: "engine",
    Tier.HOST_RAM: "host RAM",
    Tier.LOCAL_DISK: "local disk",
    Tier.OBJECT_STORE: "origin",
}


class ServingEngine(Protocol):
    """What the pool needs of an engine (cag.engine): many streams at once, modules it keeps resident."""

    @property
    def identity(self) -> EngineIdentity: ...

    @property
    def kv_shape(self) -> KVShape: ...

    @property
    def kv_capacity(self) -> int: ...

    def generate(self, request: GenerateRequest) -> Iterator[TokenEvent]: ...

    def load(self, chain: Sequence[KVSource]) -> None: ...

    def drop(self, module_id: str) -> bool: ...

    def resident(self) -> dict[str, int]: ...


class RegistryPort(Protocol):
    """The registry as the pool uses it (cag.cachepool.registry_link over gRPC; a fake in unit tests)."""

    async def get(self, module_id: str) -> ModuleRecord:
        """The record; UnknownModuleError when there is none."""
        ...

    async def quarantine(self, module_id: str, reason: str) -> None: ...


class WatchedSource:
    """A KVSource that remembers whether its rows failed verification while the engine read them."""

    def __init__(self, inner: KVSource) -> None:
        self.inner = inner
        self.failed = False

    @property
    def metadata(self) -> ModuleMetadata:
        return self.inner.metadata

    @property
    def token_count(self) -> int:
        return self.inner.token_count

    @property
    def in_memory(self) -> bool:
        return self.inner.in_memory

    def tokens(self) -> list[int]:
        return self.inner.tokens()

    def read_rows(self, into: RowsTarget | None = None) -> Iterator[LayerRows]:
        try:
            yield from self.inner.read_rows(into)
        except BAD_COPY:
            self.failed = True
            raise


@dataclass(kw_only=True)
class ChainModule:
    """One module of a request's chain: its record, where it was found, where its rows come from."""

    record: ModuleRecord
    found_in: Tier  # the fastest tier holding it when the request arrived (OBJECT_STORE: only its origin)
    source: WatchedSource
    source_tier: Tier
    # Whether the engine keeps the module once the request is done (else its copy served this request only).
    keep_in_engine: bool


class CachePool:
    def __init__(
        self,
        *,
        engine: ServingEngine,
        registry: RegistryPort,
        residency: Residency,
        disk: DiskTier,
        executor: Executor,
        promotion: PromotionRule | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.residency = residency
        self.disk = disk
        self.promotion = promotion or PromotionRule()
        self.snapshot = RegistrySnapshot()
        self._executor = executor
        self._clock = clock
        self._ram: dict[str, LoadedModule] = {}
        self._files: dict[str, ModuleFile] = {}
        self._flights: dict[tuple[str, Tier], asyncio.Future[Any]] = {}
        self._priorities: dict[str, int] = {}
        self._disk_checked = False
        # Modules dropped because the registry took them out of service (cachepool.proto's `invalidations`).
        self.invalidations = 0
        # Lookups that found a module in no cache tier (served from its origin).
        self.origin_hits = 0

    # --- start ------------------------------------------------------------------------------------------------

    def index_disk(self) -> int:
        """Re-admits the module files the local disk tier kept across a restart (known by their own headers;
        checked against the registry once its snapshot is in). Returns how many."""
        for module in self.disk.reindex():
            tokens = module.token_count
            spec = ModuleSpec(module_id=module.metadata.module_id, bytes=self._bytes(tokens), token_count=tokens)
            try:
                self._admit(spec, Tier.LOCAL_DISK)
            except TierFullError:
                self.disk.discard(module.metadata.module_id)
                continue
            self._files[module.metadata.module_id] = module
        return len(self._files)

    async def on_caught_up(self) -> None:
        """The registry's snapshot is complete (on every reconnection of the feed): serve, and the first time,
        cross-check the files the disk tier kept against the registry's records."""
        self.snapshot.mark_caught_up()
        if self._disk_checked:
            return
        self._disk_checked = True
        for module_id, module in list(self._files.items()):
            try:
                record = await self.record(module_id)
                self.snapshot.require_servable(record)
                module.check_record(tensor_checksum=record.tensor_checksum, header_sha256=record.header_sha256)
            except (UnknownModuleError, ModuleNotServableError, ModuleMismatchError) as e:
                # Not quarantined: the published file may be fine; only this stale or altered local copy goes.
                log.info("local disk tier: dropping %s after the restart: %s", module_id, e)
                self.drop_everywhere(module_id)
            except CagError as e:  # the registry unreachable: keep the file, it is checked again on use
                log.warning("local disk tier: could not cross-check %s: %s", module_id, e)

    # --- the registry's word --------------------------------------------------------------------------------

    def apply_change(self, change: StateChange) -> None:
        """A feed change or a module event; a module taken out of service leaves every tier now (synchronously:
        the drop must land within 200 ms of the event)."""
        if self.snapshot.apply(change) and self.drop_everywhere(change.module_id):
            self.invalidations += 1

    def drop_everywhere(self, module_id: str) -> tuple[Tier, ...]:
        """Removes the module from every tier, pinned or not; returns the tiers it left."""
        left = self.residency.drop(module_id)
        self._ram.pop(module_id, None)
        if self._files.pop(module_id, None) is not None:
            self.disk.discard(module_id)
        self.engine.drop(module_id)
        return left

    async def record(self, module_id: str) -> ModuleRecord:
        """The registry's record, fetched once and kept (states change through the snapshot)."""
        record = self.snapshot.record(module_id)
        if record is None:
            record = await self.registry.get(module_id)
            self.snapshot.remember(record)
        return record

    # --- requests ---------------------------------------------------------------------------------------------

    async def resolve(
        self, module_ids: Sequence[str], tenant_id: str | None, *, chain: bool = True
    ) -> list[ModuleRecord]:
        """The modules' records, once they may be served: the snapshot is in, the ids are well formed, `tenant_id`
        may use every module (None: an operation of the router's or an admin's, for no tenant), with `chain`
        they form one chain root first, and every module is published and built for this pool's model."""
        self.snapshot.require_ready()
        ids = check_module_ids(module_ids)
        records = list(await asyncio.gather(*(self.record(m) for m in ids)))
        if tenant_id is not None:
            check_visible(records, tenant_id)
        if chain:
            check_chain(records)
        for record in records:
            self.snapshot.require_servable(record)
            if record.model_name != self.engine.identity.model_name:
                raise ModuleMismatchError(
                    "model_name", self.engine.identity.model_name, record.model_name, module=record.module_id,
                    expected_by="this cache pool's engine serves",
                )  # fmt: skip
        return records

    async def chain(
        self, records: Sequence[ModuleRecord], route_priority: int, route_confidence: float = 0.0
    ) -> list[ChainModule]:
        """Where each module is found (hits and misses counted) and the copy the engine restores it from, loading
        modules the engine does not hold into the data tiers first: into host RAM where they earn it (see the
        module docstring). System and tool parents are pinned."""
        self._reprioritize(records, route_priority)
        found = [self._lookup(record.module_id) for record in records]
        promotions = [self._promotion(r, tier, route_confidence) for r, tier in zip(records, found, strict=True)]
        loaded = await asyncio.gather(
            *(self._source(r, tier, p) for r, tier, p in zip(records, found, promotions, strict=True))
        )
        chain = []
        for record, tier, promotion, (source, source_tier) in zip(records, found, promotions, loaded, strict=True):
            self.engine.identity.check(source.metadata, layout_hash=records[-1].layout_hash)
            if promotion.pin and self.residency.resident_tiers(record.module_id):
                self.residency.pin(record.module_id)
            keep = tier is Tier.ENGINE or promotion.to_engine
            watched = WatchedSource(source)
            chain.append(
                ChainModule(record=record, found_in=tier, source=watched, source_tier=source_tier, keep_in_engine=keep)
            )
        return chain

    def enter_engine(self, chain: Sequence[ChainModule]) -> None:
        """Makes room in the engine for the chain's modules it does not hold (the policy picks what leaves) and
        holds every module of the chain until `leave_engine`. TierFullError when running requests hold too much."""
        for module in chain:
            if Tier.ENGINE not in self.residency.resident_tiers(module.record.module_id):
                self._admit(self._spec(module.record), Tier.ENGINE)
        for module in chain:
            self.residency.hold(module.record.module_id)

    def leave_engine(self, chain: Sequence[ChainModule], restore_s: float | None) -> None:
        """The request is done: release the chain, and bring the books in line with what the engine holds (a
        restore that failed left nothing; a module withdrawn meanwhile must not stay). `restore_s`: the engine's
        measured restore, folded into the reload cost of the tier the rows came from (when only one did)."""
        resident = self.engine.resident()
        for module in chain:
            module_id = module.record.module_id
            self.residency.release(module_id)
            if self.snapshot.is_withdrawn(module_id):
                self.engine.drop(module_id)
            elif module_id not in resident:
                self.residency.remove(module_id, Tier.ENGINE)
            elif not module.keep_in_engine and module_id in self.residency.idle_in(Tier.ENGINE):
                self.evict(module_id, Tier.ENGINE)  # not granted the engine: its copy served this request only
        restored = [m for m in chain if m.found_in is not Tier.ENGINE]
        if restore_s and restored and len({m.source_tier for m in restored}) == 1:
            tokens = sum(m.record.token_count for m in restored)
            self.residency.record_load(restored[0].source_tier, self._bytes(tokens), restore_s, loads=len(restored))

    async def reconcile_engine(self) -> None:
        """Brings the engine tier's books in line with what the engine holds now: an engine may let an idle module
        go on its own (vLLM's prefix cache reuses its least recently used blocks)."""
        resident = await self._run(self.engine.resident)
        for module_id in self.residency.idle_in(Tier.ENGINE) - resident.keys():
            self.residency.remove(module_id, Tier.ENGINE)

    async def recover(self, chain: Sequence[ChainModule], error: CagError) -> bool:
        """After the engine refused a copy as it restored it: discard that copy, quarantine the module, and point
        the chain at the module's origin file. False when nothing is left to try (the origin itself failed, or no
        copy of the chain failed: the error was about something else)."""
        failed = [m for m in chain if m.source.failed]
        for module in failed:
            await self._bad_copy(module.record, module.source_tier, error)
        if not failed or any(m.source_tier is Tier.OBJECT_STORE for m in failed):
            return False
        for module in failed:
            module.source = WatchedSource(await self._open_origin(module.record))
            module.source_tier = Tier.OBJECT_STORE
        return True

    # --- operations ---------------------------------------------------------------------------------------

    async def prefetch(self, records: Sequence[ModuleRecord], tier: Tier) -> None:
        """Brings the modules into `tier` (for the engine, `records` is a chain, root first)."""
        if tier is Tier.ENGINE:
            chain = await self.chain(records, route_priority=1)
            for module in chain:
                module.keep_in_engine = True  # asked for by name: whatever the promotion rule would grant
            self.enter_engine(chain)
            began = time.perf_counter()
            try:
                await self._run(self.engine.load, [m.source for m in chain])
            finally:
                self.leave_engine(chain, restore_s=time.perf_counter() - began)
            return
        load = self._to_ram if tier is Tier.HOST_RAM else self._to_disk
        await asyncio.gather(*(load(record) for record in records))

    def evict(self, module_id: str, tier: Tier | None) -> None:
        """Drops the module from one tier, or from every one (None); pinned modules too."""
        if tier is None:
            self.drop_everywhere(module_id)
            return
        self.residency.remove(module_id, tier)
        self._forget_copy(module_id, tier)

    def view(self, module_id: str) -> ResidentModule | None:
        tiers = self.residency.resident_tiers(module_id)
        return self.residency.module(module_id, self._clock()) if tiers else None

    def now(self) -> datetime:
        return self._clock()

    # --- loading ------------------------------------------------------------------------------------------

    def _lookup(self, module_id: str) -> Tier:
        tier = self.residency.hit(module_id, self._clock())
        if tier is None:
            self.origin_hits += 1
            return Tier.OBJECT_STORE
        return tier

    def _promotion(self, record: ModuleRecord, found_in: Tier, route_confidence: float) -> Promotion:
        return self.promotion.decide(
            hits_last_15m=self.residency.hits_last_15m(record.module_id, self._clock()),
            confidence=route_confidence,
            found_in=found_in,
            acl_scope=record.acl_scope,
            parent_id=record.parent_id,
        )

    def _admitted_to_host_ram(self, record: ModuleRecord, promotion: Promotion) -> bool:
        """Whether the policy lets the module into host RAM (a system parent, pinned, needs no admission)."""
        return promotion.pin or self.residency.worth_admitting(self._spec(record), Tier.HOST_RAM, self._clock())

    async def _source(self, record: ModuleRecord, found_in: Tier, promotion: Promotion) -> tuple[KVSource, Tier]:
        """The copy the engine restores the module from: host RAM, else the local disk, else the origin; a module
        not yet in host RAM is copied there first when the rule grants it and the policy admits it. A module the
        engine holds needs none read, but gets the nearest one anyway (the engine matches it by content)."""
        module_id, in_engine = record.module_id, found_in is Tier.ENGINE
        if module_id in self._ram:
            return self._ram[module_id], Tier.HOST_RAM
        if in_engine and module_id in self._files:
            return self._files[module_id], Tier.LOCAL_DISK
        if not in_engine and promotion.to_host_ram:
            try:
                # The RAM copy is made from the disk copy: the policy weighs it as reloadable from there.
                on_disk = await self._to_disk(record)
                if self._admitted_to_host_ram(record, promotion):
                    return await self._to_ram(record), Tier.HOST_RAM
                return on_disk, Tier.LOCAL_DISK
            except TierFullError:
                pass  # the disk or host RAM is held by pinned modules: restore from the disk copy, else the origin
            except BAD_COPY:
                pass  # the disk copy was bad (discarded, quarantined): the origin still may verify
        if not in_engine:
            try:
                return await self._to_disk(record), Tier.LOCAL_DISK
            except TierFullError:
                pass
        return await self._open_origin(record), Tier.OBJECT_STORE

    async def _open_origin(self, record: ModuleRecord) -> ModuleFile:
        """The origin file itself, header checked against the record; the engine verifies its rows as it reads."""
        path = self.disk.origins.local_path(record)
        if path is None:  # an object-store origin reaches the engine through the local disk tier
            return await self._to_disk(record)
        return await self._run(open_checked, path, record, tier="origin")

    async def _to_disk(self, record: ModuleRecord) -> ModuleFile:
        module = self._files.get(record.module_id)
        if module is not None:
            return module
        return await self._single_flight(record.module_id, Tier.LOCAL_DISK, lambda: self._load_disk(record))

    async def _to_ram(self, record: ModuleRecord) -> LoadedModule:
        copy = self._ram.get(record.module_id)
        if copy is not None:
            return copy
        return await self._single_flight(record.module_id, Tier.HOST_RAM, lambda: self._load_ram(record))

    async def _load_disk(self, record: ModuleRecord) -> ModuleFile:
        self._admit(self._spec(record), Tier.LOCAL_DISK)  # room first: a load never overfills its tier
        began = time.perf_counter()
        try:
            module = await self._run(self.disk.copy_in, record)
        except BAD_COPY as e:
            self.residency.remove(record.module_id, Tier.LOCAL_DISK)
            await self._quarantine(record, f"its origin file failed verification: {e}")
            raise
        except BaseException:
            self.residency.remove(record.module_id, Tier.LOCAL_DISK)
            raise
        self._measured(Tier.OBJECT_STORE, record, time.perf_counter() - began)
        if not self._still_wanted(record, Tier.LOCAL_DISK):
            self.disk.discard(record.module_id)
            return module
        self._files[record.module_id] = module
        return module

    async def _load_ram(self, record: ModuleRecord) -> LoadedModule:
        module = await self._to_disk(record)
        self._admit(self._spec(record), Tier.HOST_RAM)
        began = time.perf_counter()
        try:
            copy = await self._run(ram_copy, module)
        except BAD_COPY as e:
            self.residency.remove(record.module_id, Tier.HOST_RAM)
            await self._bad_copy(record, Tier.LOCAL_DISK, e)
            raise
        except BaseException:
            self.residency.remove(record.module_id, Tier.HOST_RAM)
            raise
        self._measured(Tier.LOCAL_DISK, record, time.perf_counter() - began)
        if self._still_wanted(record, Tier.HOST_RAM):
            self._ram[record.module_id] = copy
        return copy

    async def _bad_copy(self, record: ModuleRecord, tier: Tier, error: Exception) -> None:
        """Discards a tier's copy that failed verification and quarantines the module."""
        log.error("module %s: the %s copy failed verification: %s", record.module_id, TIER_NAMES[tier], error)
        if tier is not Tier.OBJECT_STORE:
            self.evict(record.module_id, tier)
        await self._quarantine(record, f"its copy in the {TIER_NAMES[tier]} tier failed verification: {error}")

    async def _quarantine(self, record: ModuleRecord, reason: str) -> None:
        try:
            await self.registry.quarantine(record.module_id, reason[:1024])
        except Exception as e:  # the copy is gone either way; the registry hears of it from the next failure
            log.error("could not quarantine module %s in the registry: %s", record.module_id, e)

    def _still_wanted(self, record: ModuleRecord, tier: Tier) -> bool:
        """After a load: whether the tier still reserves the module (not withdrawn or evicted meanwhile).
        A withdrawn module is refused; an evicted one serves this request from the copy and is not kept."""
        if self.snapshot.is_withdrawn(record.module_id):
            self.snapshot.require_servable(record)
        return tier in self.residency.resident_tiers(record.module_id)

    async def _single_flight(self, module_id: str, tier: Tier, load: Callable[[], Awaitable[T]]) -> T:
        """One load of a module into a tier at a time; concurrent callers share it. A caller that is cancelled
        leaves the load running for the others (shield)."""
        key = (module_id, tier)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.ensure_future(load())
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        result: T = await asyncio.shield(flight)
        return result

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: call(*args, **kwargs))

    # --- books ----------------------------------------------------------------------------------------------

    def _admit(self, spec: ModuleSpec, tier: Tier) -> None:
        """Admits the module into the tier's books, removing whatever the policy evicts for it."""
        for eviction in self.residency.admit(spec, tier, self._clock()):
            log.info("evicting %s from the %s tier", eviction.module_id, TIER_NAMES[tier])
            self._forget_copy(eviction.module_id, tier)

    def _forget_copy(self, module_id: str, tier: Tier) -> None:
        if tier is Tier.ENGINE:
            self.engine.drop(module_id)
        elif tier is Tier.HOST_RAM:
            self._ram.pop(module_id, None)
        elif self._files.pop(module_id, None) is not None:
            self.disk.discard(module_id)

    def _measured(self, tier: Tier, record: ModuleRecord, seconds: float) -> None:
        self.residency.record_load(tier, self._bytes(record.token_count), seconds)

    def _reprioritize(self, records: Sequence[ModuleRecord], route_priority: int) -> None:
        # The route's priority weighs the module's hits from its next admission on.
        for record in records:
            self._priorities[record.module_id] = max(1, route_priority)

    def _spec(self, record: ModuleRecord) -> ModuleSpec:
        return ModuleSpec(
            module_id=record.module_id,
            bytes=self._bytes(record.token_count),
            token_count=record.token_count,
            route_priority=self._priorities.get(record.module_id, 1),
        )

    def _bytes(self, tokens: int) -> int:
        return max(1, tokens * self.engine.kv_shape.bytes_per_token)
