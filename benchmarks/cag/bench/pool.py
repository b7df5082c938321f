"""`cag bench pool`: the cache pool's eviction policies under a Zipf workload, compared by modeled TTFT.

TTFT here is MODELED from measured restore costs, not timed end to end. At the start, on this machine, real
module files of the benchmark model (random KV, the model's shape and dtype; 512 and 4096 tokens) are timed
through the pool's own paths: a restore from a host-RAM copy (`read_rows` into preallocated engine-shaped
buffers), a hit on the local disk (the pool copies the cold file into RAM, verifying it, then restores from the
copy), a miss to the origin (a cold origin file copied atomically into the disk tier and verified, then copied
into RAM and restored), and the query's prefill on the torch engine with the module already resident. A
streaming restore straight from a warm and from a cold file are reported for reference. Each path's cost is the
line through its two sizes: a fixed cost per load plus seconds per GiB.

Then a Zipf workload (popularity uncorrelated with size) of requests over more modules, and more bytes, than
host RAM holds runs through the real residency core (`cag.cachepool.core.Residency`, engine, host RAM and
local disk budgets) once per eviction policy, with the same request sequence for each. As the pool does, a
request is served from the fastest tier holding its module, which is then copied where the pool's promotion
rule (default thresholds) and the policy's admission test put it (see `serve`), the policy choosing what leaves
each tier. A request's TTFT = the query prefill + the fixed cost of a load from the tier it was served from +
the module's GiB x that tier's cost per GiB (the engine: 0). Reading a cold file and the
query's forward pass are not overlapped in the model, as the pool's RAM path does not overlap them either.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cag.acl import AclScope
from cag.bench.arguments import positive_int
from cag.bench.output import emit_report
from cag.bench.ttft import Timing, ensure_cold
from cag.cachepool.core import CACHE_TIERS, ModuleSpec, PoolSettings, PromotionRule, Residency, Tier, TierBudgets
from cag.cachepool.core.policies import GIB
from cag.cachepool.tiers import ram_copy
from cag.canonical.checksum import chain_hash
from cag.engine import Engine, GenerateRequest, SamplingParams, load_engine
from cag.kvmodule import KVSource, ModuleFile, write_module
from cag.kvmodule.atomic import atomic_writer
from cag.metadata import DtypeName, GoldenStatus, ModuleMetadata
from cag.models import SMOLLM2, resolve_model
from cag.settings import CagSettings

T = TypeVar("T")
Tick = Callable[[str], None]

POLICY_NAMES = ("cost_aware", "lru", "lfu")
DEFAULT_SKEWS = (0.6, 0.9, 1.2)
DEFAULT_OUT = Path("benchmarks/results/pool.json")
DTYPE: DtypeName = "fp32"
MEASURE_TOKENS = 4096
# The second size each restore path is timed at: the line through the two gives a fixed cost per load.
SMALL_MEASURE_TOKENS = 512
QUERY_TOKENS = 24
COPY_CHUNK = 8 << 20
# Where a request can be served from, fastest first.
SERVED_FROM = (*CACHE_TIERS, Tier.OBJECT_STORE)
MEASURE_STEPS = 8  # RAM, disk hit, origin miss at each size, query prefill, streaming restore (warm and cold)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
TTFT_MODEL = (
    "TTFT is modeled from measured restore costs: query prefill (timed on the engine with the module resident) + "
    "the measured fixed cost per load + module GiB x the measured seconds per GiB of the tier that served it "
    "(engine 0); the request sequence runs through the real residency core and promotion rule, but no request "
    "is timed end to end"
)


# ---------------------------------------------------------------- costs


@dataclass(frozen=True, kw_only=True)
class TierCosts:
    """What a request pays before its first token, by the tier its module was served from: the query's prefill,
    then a fixed cost per load plus the module's GiB times the tier's cost per GiB."""

    query_prefill_s: float
    # Seconds per GiB to bring a module into the engine from each tier (Tier value -> s/GiB; ENGINE is 0).
    reload_s_per_gib: dict[str, float]
    # Seconds every load from a tier costs whatever its size (Tier value -> s; ENGINE is 0).
    load_fixed_s: dict[str, float]

    def __post_init__(self) -> None:
        for name, costs in (("reload_s_per_gib", self.reload_s_per_gib), ("load_fixed_s", self.load_fixed_s)):
            if set(costs) != {t.value for t in SERVED_FROM} or costs[Tier.ENGINE] != 0 or min(costs.values()) < 0:
                raise ValueError(f"{name} needs every tier of {[t.value for t in SERVED_FROM]} >= 0, ENGINE at 0")

    def ttft_s(self, served_from: Tier, nbytes: int) -> float:
        tier = served_from.value
        return self.query_prefill_s + self.load_fixed_s[tier] + self.reload_s_per_gib[tier] * nbytes / GIB

    def pool_settings(self, budgets: TierBudgets, policy: str) -> PoolSettings:
        """The residency core configured with these costs, as measured (its cost-aware policy weighs them)."""
        return PoolSettings(
            budgets=budgets,
            eviction_policy=policy,
            initial_reload_ms_per_gib={Tier(t): s * 1000 for t, s in self.reload_s_per_gib.items()},
            load_fixed_ms={Tier(t): s * 1000 for t, s in self.load_fixed_s.items()},
        )


@dataclass(frozen=True, kw_only=True)
class PathTimings:
    """The pool's three restore paths, timed on one module file of `file_bytes` (`tokens` tokens)."""

    tokens: int
    file_bytes: int
    ram_restore: Timing  # read_rows from the pool's verified host-RAM copy into engine-shaped buffers
    disk_hit: Timing  # ram_copy of the cold disk-tier file (verified), then the RAM restore
    origin_miss: Timing  # cold origin file copied into the disk tier and verified, then ram_copy and restore

    def median_s(self, tier: Tier) -> float:
        return {Tier.HOST_RAM: self.ram_restore, Tier.LOCAL_DISK: self.disk_hit, Tier.OBJECT_STORE: self.origin_miss}[
            tier
        ].median_s


def fit_load_cost(small: PathTimings, large: PathTimings, tier: Tier) -> tuple[float, float]:
    """(fixed seconds per load, seconds per GiB) of a tier: the line through its median load times at the two
    sizes. Noise can tilt it: below the origin it becomes proportional to size (through the large load), and a
    negative slope becomes flat (the small load's time for every size)."""
    small_gib, large_gib = small.file_bytes / GIB, large.file_bytes / GIB
    per_gib = max(0.0, (large.median_s(tier) - small.median_s(tier)) / (large_gib - small_gib))
    fixed = small.median_s(tier) - per_gib * small_gib
    if fixed < 0:
        return 0.0, large.median_s(tier) / large_gib
    return fixed, per_gib


@dataclass(frozen=True, kw_only=True)
class CostMeasurement:
    """The timings the costs come from: the pool's restore paths on module files of two sizes, `reps` times each
    (medians used); each tier's fixed cost per load and cost per GiB are the line through the two."""

    model: str
    engine: str
    dtype: str
    query_tokens: int
    kv_bytes_per_token: int
    reps: int
    query_prefill: Timing  # generate's first token with the large module already resident in the engine
    small: PathTimings
    large: PathTimings
    stream_warm: Timing  # reference: ModuleFile.read_rows from the file while it is in the page cache
    stream_cold: Timing  # reference: ModuleFile.read_rows from the cold file
    cold_resident_fractions: list[float]  # mincore before every cold repetition
    # Other work on the machine skews every timing: the 1/5/15-minute load averages before and after measuring.
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]
    cpu_count: int | None
    torch_threads: int
    costs: TierCosts = field(init=False)

    def __post_init__(self) -> None:
        fitted = {tier: fit_load_cost(self.small, self.large, tier) for tier in SERVED_FROM[1:]}
        costs = TierCosts(
            query_prefill_s=self.query_prefill.median_s,
            reload_s_per_gib={Tier.ENGINE.value: 0.0} | {t.value: per_gib for t, (_, per_gib) in fitted.items()},
            load_fixed_s={Tier.ENGINE.value: 0.0} | {t.value: fixed for t, (fixed, _) in fitted.items()},
        )
        object.__setattr__(self, "costs", costs)


# ---------------------------------------------------------------- workload and simulation


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """The simulated modules, requests and tier budgets."""

    bytes_per_token: int
    modules: int = 60
    # Module sizes are log-uniform in [min_tokens, max_tokens].
    min_tokens: int = 512
    max_tokens: int = 8192
    requests: int = 8000
    # The first requests fill the tiers; they are simulated but not counted.
    warmup_requests: int = 1000
    # Mean arrival rate (Poisson arrivals), requests per second: sets how many hits the 15-minute window holds.
    requests_per_s: float = 0.5
    # Tier budgets as fractions of all modules' bytes (the engine's at least the largest module).
    engine_fraction: float = 0.08
    host_ram_fraction: float = 0.25
    local_disk_fraction: float = 0.6
    # The router's confidence in the routes, as the promotion rule weighs it (rule and metadata routes: 1).
    route_confidence: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_requests < self.requests:
            raise ValueError("warmup_requests must be >= 0 and fewer than requests")
        if not 0 < self.min_tokens <= self.max_tokens or self.modules < 1 or self.requests_per_s <= 0:
            raise ValueError("the workload needs modules, 0 < min_tokens <= max_tokens and a positive rate")


@dataclass(frozen=True, kw_only=True)
class Workload:
    modules: list[ModuleSpec]
    budgets: TierBudgets

    @property
    def total_bytes(self) -> int:
        return sum(m.bytes for m in self.modules)


def build_workload(spec: WorkloadSpec) -> Workload:
    rng = random.Random(spec.seed)
    lo, hi = math.log(spec.min_tokens), math.log(spec.max_tokens)
    modules = []
    for i in range(spec.modules):
        tokens = round(math.exp(rng.uniform(lo, hi)))
        modules.append(ModuleSpec(module_id=f"m{i:03d}", bytes=tokens * spec.bytes_per_token, token_count=tokens))
    total, largest = sum(m.bytes for m in modules), max(m.bytes for m in modules)
    budgets = TierBudgets(
        engine_bytes=max(int(spec.engine_fraction * total), largest),
        host_ram_bytes=max(int(spec.host_ram_fraction * total), largest),
        local_disk_bytes=max(int(spec.local_disk_fraction * total), largest),
    )
    return Workload(modules=modules, budgets=budgets)


def zipf_requests(spec: WorkloadSpec, skew: float) -> list[tuple[float, int]]:
    """(seconds since the start, module index) for each request: module ranks shuffled (popularity is not size),
    P(rank r) ~ 1 / r^skew, Poisson arrivals. The same spec and skew give the same sequence."""
    rng = random.Random(f"{spec.seed}:{skew}")
    ranks = list(range(1, spec.modules + 1))
    rng.shuffle(ranks)
    weights = [1 / r**skew for r in ranks]
    picks = rng.choices(range(spec.modules), weights=weights, k=spec.requests)
    at, requests = 0.0, []
    for module in picks:
        at += rng.expovariate(spec.requests_per_s)
        requests.append((at, module))
    return requests


@dataclass(frozen=True, kw_only=True)
class PolicyResult:
    # Fraction of the counted requests served from each tier (Tier value; ENGINE ... OBJECT_STORE), summing to 1.
    hit_ratio: dict[str, float]
    mean_ttft_s: float
    p50_ttft_s: float
    p99_ttft_s: float
    # Modules each cache tier evicted over the whole run, warm-up included.
    evictions: dict[str, int]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in (0, 100]) of values sorted ascending."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def serve(residency: Residency, rule: PromotionRule, module: ModuleSpec, confidence: float, now: datetime) -> Tier:
    """One request, as the pool places its module: served from the fastest tier holding it; copied onto the
    local disk when it came from the origin; into host RAM when the promotion rule grants it and the policy
    admits it there; restored into the engine (which must hold it to serve it) and kept there only when the
    rule grants it. Returns the tier it was served from."""
    served_from = residency.hit(module.module_id, now) or Tier.OBJECT_STORE
    promotion = rule.decide(
        hits_last_15m=residency.hits_last_15m(module.module_id, now), confidence=confidence, found_in=served_from,
        acl_scope=AclScope.TENANT, parent_id="",
    )  # fmt: skip
    # Never TierFullError: nothing is pinned or held and every budget holds the largest module.
    if served_from is Tier.OBJECT_STORE:
        residency.admit(module, Tier.LOCAL_DISK, now)
    if promotion.to_host_ram and residency.worth_admitting(module, Tier.HOST_RAM, now):
        residency.admit(module, Tier.HOST_RAM, now)
    if served_from is not Tier.ENGINE:
        residency.admit(module, Tier.ENGINE, now)
        if not promotion.to_engine:
            residency.remove(module.module_id, Tier.ENGINE)
    return served_from


def simulate(
    policy: str, workload: Workload, requests: Sequence[tuple[float, int]], costs: TierCosts, spec: WorkloadSpec
) -> PolicyResult:
    """Every request through a fresh residency core with `policy`; TTFT modeled per request."""
    residency = Residency(costs.pool_settings(workload.budgets, policy))
    served = dict.fromkeys(SERVED_FROM, 0)
    ttfts: list[float] = []
    now = T0
    for i, (at, index) in enumerate(requests):
        now = T0 + timedelta(seconds=at)
        module = workload.modules[index]
        tier = serve(residency, PromotionRule(), module, spec.route_confidence, now)
        if i >= spec.warmup_requests:
            served[tier] += 1
            ttfts.append(costs.ttft_s(tier, module.bytes))
    ttfts.sort()
    counted = len(ttfts)
    return PolicyResult(
        hit_ratio={t.value: n / counted for t, n in served.items()},
        mean_ttft_s=statistics.fmean(ttfts),
        p50_ttft_s=percentile(ttfts, 50),
        p99_ttft_s=percentile(ttfts, 99),
        evictions={s.tier.value: s.evictions for s in residency.stats(now).tiers},
    )


@dataclass(frozen=True, kw_only=True)
class SkewResult:
    skew: float
    policies: dict[str, PolicyResult]
    lowest_mean_ttft: str  # the policy with the lowest mean TTFT at this skew


def run_simulation(
    spec: WorkloadSpec, costs: TierCosts, skews: Sequence[float], tick: Tick, policies: Sequence[str] = POLICY_NAMES
) -> list[SkewResult]:
    """Each skew's request sequence through each policy (no files, no clock: deterministic for a spec)."""
    workload = build_workload(spec)
    results = []
    for skew in skews:
        requests = zipf_requests(spec, skew)
        by_policy = {}
        for policy in policies:
            by_policy[policy] = simulate(policy, workload, requests, costs, spec)
            tick(f"skew {skew}: {policy}")
        best = min(by_policy, key=lambda p: (by_policy[p].mean_ttft_s, p))
        results.append(SkewResult(skew=skew, policies=by_policy, lowest_mean_ttft=best))
    return results


# ---------------------------------------------------------------- report


@dataclass(frozen=True, kw_only=True)
class Parameters:
    workload: WorkloadSpec
    skews: tuple[float, ...]
    policies: tuple[str, ...]
    total_module_bytes: int
    budgets: dict[str, int]  # Tier value -> bytes
    smallest_module_bytes: int
    largest_module_bytes: int


@dataclass(frozen=True, kw_only=True)
class PoolReport:
    created_at: str
    ttft_model: str
    parameters: Parameters
    costs: TierCosts
    measurement: CostMeasurement | None  # None when the costs were given rather than measured (tests)
    skews: list[SkewResult]
    # The target: cost_aware has the lowest mean TTFT at every skew.
    cost_aware_lowest_mean_ttft_everywhere: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def build_report(
    spec: WorkloadSpec,
    costs: TierCosts,
    skews: Sequence[float],
    tick: Tick,
    measurement: CostMeasurement | None = None,
    policies: Sequence[str] = POLICY_NAMES,
) -> PoolReport:
    """The simulation for every skew and policy, with its parameters and the target's verdict."""
    workload = build_workload(spec)
    results = run_simulation(spec, costs, skews, tick, policies)
    sizes = [m.bytes for m in workload.modules]
    return PoolReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ttft_model=TTFT_MODEL,
        parameters=Parameters(
            workload=spec,
            skews=tuple(skews),
            policies=tuple(policies),
            total_module_bytes=workload.total_bytes,
            budgets={t.value: workload.budgets.of(t) for t in CACHE_TIERS},
            smallest_module_bytes=min(sizes),
            largest_module_bytes=max(sizes),
        ),
        costs=costs,
        measurement=measurement,
        skews=results,
        cost_aware_lowest_mean_ttft_everywhere=all(r.lowest_mean_ttft == "cost_aware" for r in results),
    )


# ---------------------------------------------------------------- measuring the costs


def _timed(fn: Callable[[], T]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _repeat(reps: int, fn: Callable[[], object], before: Callable[[], None] | None = None) -> Timing:
    """`reps` timed calls of `fn`, each after an untimed `before`."""
    samples = []
    for _ in range(reps):
        if before is not None:
            before()
        samples.append(_timed(fn))
    return Timing.of(samples)


def _metadata(engine: Engine, ids: Sequence[int]) -> ModuleMetadata:
    ident, n = engine.identity, len(ids)
    context = hashlib.sha256(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes()).hexdigest()
    layout = json.dumps({"benchmark": "pool", "tokens": n}, sort_keys=True)
    return ModuleMetadata(
        module_id=f"bench-pool-{n}",
        tenant_id="bench",
        route="bench/pool",
        model_name=ident.model_name,
        model_revision=ident.model_revision,
        tokenizer_revision=ident.tokenizer_revision,
        context_checksum=context,
        source_checksum=context,
        token_count=n,
        dtype=DTYPE,
        acl_scope=AclScope.PUBLIC,
        acl_principal="",
        created_at=None,
        expires_at=None,
        layout_id=f"bench-pool-{n}",
        layout_hash=context,
        layout=layout,
        parent_id=None,
        parent_chain_hash=None,
        chain_hash=chain_hash(parent_chain_hash=None, context_checksum=context),
        engine_fingerprint=ident.engine_fingerprint,
        golden_status=GoldenStatus.NONE,
        golden_results="[]",
    )


def _restore(source: KVSource, k: torch.Tensor, v: torch.Tensor) -> None:
    """Every row of the module into preallocated k, v [layers, tokens, kv_heads, head_dim]."""
    for _ in source.read_rows(into=lambda layer: (k[layer], v[layer])):
        pass


def _copy_in(origin: Path, target: Path) -> ModuleFile:
    """The disk tier's copy_in: an atomic copy of the origin file, then every byte verified."""
    with origin.open("rb") as src, atomic_writer(target) as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)
    module = ModuleFile.open(target)
    module.verify()
    return module


def _module_file(engine: Engine, path: Path, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Writes a module of `tokens` random rows (they restore exactly as fast as real ones) to `path`; returns
    engine-shaped buffers k, v [layers, tokens, kv_heads, head_dim] to restore it into."""
    shape = engine.kv_shape
    ids = [i % 1000 + 10 for i in range(tokens)]
    k, v = (torch.randn(shape.layers, tokens, shape.kv_heads, shape.head_dim, dtype=shape.dtype) for _ in "kv")
    write_module(path, _metadata(engine, ids), k, v, ids)
    return k, v


def _time_paths(engine: Engine, workdir: Path, tokens: int, reps: int, seen: list[float], tick: Tick) -> PathTimings:
    """The pool's three restore paths for a module file of `tokens` tokens (see the module docstring)."""
    origin, disk = workdir / f"origin-{tokens}.safetensors", workdir / f"disk-{tokens}.safetensors"
    k, v = _module_file(engine, origin, tokens)
    copy = ram_copy(ModuleFile.open(origin))
    _restore(copy, k, v)  # untimed: the first restore's one-off costs
    ram = _repeat(reps, lambda: _restore(copy, k, v))
    tick(f"{tokens} tokens: restore from host RAM")
    _copy_in(origin, disk)
    disk_hit = _repeat(reps, lambda: _restore(ram_copy(ModuleFile.open(disk)), k, v), lambda: ensure_cold(disk, seen))
    tick(f"{tokens} tokens: disk hit (cold file, RAM, restore)")

    def cold_origin() -> None:
        disk.unlink(missing_ok=True)
        ensure_cold(origin, seen)

    miss = _repeat(reps, lambda: _restore(ram_copy(_copy_in(origin, disk)), k, v), cold_origin)
    tick(f"{tokens} tokens: origin miss (copy in, RAM, restore)")
    return PathTimings(
        tokens=tokens, file_bytes=origin.stat().st_size, ram_restore=ram, disk_hit=disk_hit, origin_miss=miss
    )


def measure_costs(model_name: str, models_dir: Path, workdir: Path, reps: int, tick: Tick) -> CostMeasurement:
    """Times real module files through the pool's restore paths on this machine (see the module docstring)."""
    load_before = os.getloadavg()
    model = resolve_model(model_name, models_dir)
    engine = load_engine("torch", model, DTYPE, kv_capacity=MEASURE_TOKENS + QUERY_TOKENS + 8)
    seen: list[float] = []
    small = _time_paths(engine, workdir, SMALL_MEASURE_TOKENS, reps, seen, tick)
    large = _time_paths(engine, workdir, MEASURE_TOKENS, reps, seen, tick)

    origin, disk = workdir / f"origin-{MEASURE_TOKENS}.safetensors", workdir / f"disk-{MEASURE_TOKENS}.safetensors"
    module = ModuleFile.open(origin)
    engine.load([module])
    query = [i % 1000 + 20 for i in range(QUERY_TOKENS)]
    first = SamplingParams(max_new_tokens=1)

    def prefill() -> None:
        next(engine.generate(GenerateRequest(chain=(module,), suffix=query, sampling=first)))

    prefill()  # untimed: the first call's one-off costs
    query_prefill = _repeat(reps, prefill)
    tick("query prefill (module resident)")
    engine.evict()

    shape = engine.kv_shape
    k, v = (torch.empty(shape.layers, MEASURE_TOKENS, shape.kv_heads, shape.head_dim, dtype=shape.dtype) for _ in "kv")
    _copy_in(origin, disk)
    stream = ModuleFile.open(disk)
    _restore(stream, k, v)  # the file is in the page cache now
    warm = _repeat(reps, lambda: _restore(stream, k, v))
    cold = _repeat(reps, lambda: _restore(stream, k, v), lambda: ensure_cold(disk, seen))
    tick("streaming restore (warm, cold file)")
    return CostMeasurement(
        model=model.name,
        engine="torch",
        dtype=DTYPE,
        query_tokens=QUERY_TOKENS,
        kv_bytes_per_token=engine.kv_shape.bytes_per_token,
        reps=reps,
        query_prefill=query_prefill,
        small=small,
        large=large,
        stream_warm=warm,
        stream_cold=cold,
        cold_resident_fractions=seen,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
    )


def run_benchmark(
    model_name: str, models_dir: Path, reps: int, seed: int, skews: Sequence[float], requests: int, tick: Tick
) -> PoolReport:
    """Measures the costs with real files (temp files removed after), then simulates every skew and policy."""
    with tempfile.TemporaryDirectory(prefix="cag-bench-pool-") as tmp:
        measurement = measure_costs(model_name, models_dir, Path(tmp), reps, tick)
    spec = WorkloadSpec(
        bytes_per_token=measurement.kv_bytes_per_token, requests=requests, warmup_requests=requests // 8, seed=seed
    )
    return build_report(spec, measurement.costs, skews, tick, measurement)


# ---------------------------------------------------------------- command line


def _skews(value: str) -> tuple[float, ...]:
    try:
        skews = tuple(float(s) for s in value.split(",") if s.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"skews must be comma-separated numbers, not {value!r}") from e
    if not skews or min(skews) < 0:
        raise argparse.ArgumentTypeError("skews must be numbers >= 0")
    return skews


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pool", help="eviction policies under a Zipf workload: TTFT modeled from measured restore costs per tier"
    )
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of a table")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where the JSON report is written (default {DEFAULT_OUT})"
    )
    p.add_argument("--reps", type=positive_int, default=3, help="repetitions per cost measurement; medians are used")
    p.add_argument("--seed", type=int, default=0, help="seed of the module sizes and request sequences")
    p.add_argument("--skews", type=_skews, default=DEFAULT_SKEWS, help="Zipf skews (default 0.6,0.9,1.2)")
    p.add_argument("--requests", type=positive_int, default=8000, help="requests per skew and policy (default 8000)")
    p.add_argument("--model", default=SMOLLM2, help=f"model whose KV shape the module files take (default {SMOLLM2})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    torch.set_num_threads(settings.num_threads or 2)
    stderr = Console(stderr=True)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        total = MEASURE_STEPS + len(args.skews) * len(POLICY_NAMES)
        task = progress.add_task("measuring restore costs", total=total)
        report = run_benchmark(
            args.model, settings.models_dir, args.reps, args.seed, args.skews, args.requests,
            lambda d: progress.update(task, advance=1, description=d),
        )  # fmt: skip
    emit_report(
        report.to_json(), args.out, as_json=args.json, render=lambda c: render(report, c), width=140, stderr=stderr
    )
    if not report.cost_aware_lowest_mean_ttft_everywhere:
        stderr.print("[yellow]target missed: cost_aware does not have the lowest mean TTFT at every skew[/yellow]")
    return 0


# ---------------------------------------------------------------- rendering


def costs_table(report: PoolReport) -> Table:
    c = report.costs
    table = Table(title="measured costs")
    table.add_column("cost")
    table.add_column("ms per load", justify="right")
    table.add_column("ms per GiB", justify="right")
    table.add_row("query prefill, module resident", f"{c.query_prefill_s * 1e3:,.1f}", "")
    for tier in SERVED_FROM:
        fixed, per_gib = c.load_fixed_s[tier.value], c.reload_s_per_gib[tier.value]
        table.add_row(f"reload from {tier.value}", f"{fixed * 1e3:,.1f}", f"{per_gib * 1e3:,.1f}")
    return table


def results_table(report: PoolReport) -> Table:
    table = Table(title="modeled TTFT per policy (ms) and share of requests served from each tier")
    for name in ("skew", "policy", "mean", "p50", "p99"):
        table.add_column(name, justify="right")
    for tier in SERVED_FROM:
        table.add_column(tier.value.lower(), justify="right")
    for row in report.skews:
        for name, r in row.policies.items():
            best = "[green]" if name == row.lowest_mean_ttft else ""
            table.add_row(
                f"{row.skew:g}",
                name,
                f"{best}{r.mean_ttft_s * 1e3:,.1f}",
                f"{r.p50_ttft_s * 1e3:,.1f}",
                f"{r.p99_ttft_s * 1e3:,.1f}",
                *(f"{r.hit_ratio[t.value]:.1%}" for t in SERVED_FROM),
            )
    return table


def render(report: PoolReport, console: Console) -> None:
    console.print(costs_table(report))
    console.print(results_table(report))
    verdict = "yes" if report.cost_aware_lowest_mean_ttft_everywhere else "no"
    console.print(f"cost_aware has the lowest mean TTFT at every skew: {verdict}")
    console.print(f"[dim]{report.ttft_model}[/dim]")
    if report.measurement is not None:
        m = report.measurement
        load = ", ".join(f"{x:.2f}" for x in m.load_average_before)
        console.print(f"[dim]{m.model} {m.dtype}, {m.torch_threads} threads, {m.cpu_count} CPUs, load {load}[/dim]")
