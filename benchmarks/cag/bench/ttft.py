"""`cag bench ttft`: time to first token with and without a restored KV module, in one run.

For each module size N, the same N real-text tokens and the same query are timed as:
full prefill, restore from host RAM, restore from a cold file, and a transformers-tutorial
baseline (torch.save'd DynamicCache, loaded cold). Restore-only throughput is compared with a
cold plain read of the same file, and the file size with the theoretical KV size. Every cold
measurement is preceded by an eviction that mincore(2) must confirm (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cag.acl import AclScope
from cag.bench import pagecache
from cag.bench.arguments import positive_int
from cag.bench.output import emit_report
from cag.canonical.checksum import chain_hash
from cag.engine import Engine, GenerateRequest, SamplingParams, load_engine
from cag.kvmodule import KVSource, ModuleFile, write_module
from cag.metadata import DtypeName, GoldenStatus, ModuleMetadata
from cag.models import SMOLLM2, ModelFiles, resolve_model
from cag.settings import CagSettings

T = TypeVar("T")
Tick = Callable[[str], None]

DEFAULT_SIZES = (1024, 2048, 4096)
DEFAULT_OUT = Path("benchmarks/results/ttft.json")
DTYPE: DtypeName = "fp32"
QUERY_TEXT = "\n\nQuestion: Which status code does the API return when a client exceeds the rate limit?\nAnswer:"
FIRST_TOKEN = SamplingParams(max_new_tokens=1)
RESERVE_SLACK = 8
MAX_RESIDENT = 0.01  # a cold measurement starts with at most this fraction of the file cached
READ_BUFFER = 16 << 20
TARGET_TOKENS = 4096
STEPS_PER_REP = 7  # full, full (transformers), file cold, tutorial cold, restore-only, plain read, ram


class NotColdError(RuntimeError):
    """A file stayed in the page cache after eviction: the measurement would not be cold."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    samples_s: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        return cls(
            median_s=statistics.median(samples), min_s=min(samples), max_s=max(samples), samples_s=tuple(samples)
        )


@dataclass(kw_only=True)
class SizeRow:
    """One module size: timings (seconds), sizes (bytes) and the ratios derived from them."""

    tokens: int
    query_tokens: int
    full_prefill: Timing
    full_prefill_transformers: Timing  # the same prompt through transformers' LlamaForCausalLM (the reference)
    cag_ram: Timing
    cag_file_cold: Timing
    tutorial_cold: Timing
    restore_cold: Timing  # ModuleFile.read_rows into preallocated token-major buffers, checksum included
    plain_read_cold: Timing  # open(rb, buffering=0) + readinto a 16 MiB buffer until EOF
    file_bytes: int
    tutorial_file_bytes: int
    theoretical_kv_bytes: int
    first_token: int
    cag_same_first_token: bool  # cag_ram and cag_file_cold agree with full_prefill
    tutorial_first_token: int
    tutorial_same_first_token: bool
    cold_resident_fractions: list[float]  # mincore before every cold repetition
    full_over_cag_ram: float = field(init=False)
    full_over_cag_file_cold: float = field(init=False)
    full_over_tutorial_cold: float = field(init=False)
    transformers_full_over_cag_ram: float = field(init=False)
    transformers_full_over_cag_file_cold: float = field(init=False)
    restore_over_plain_read: float = field(init=False)
    restore_gb_s: float = field(init=False)
    plain_read_gb_s: float = field(init=False)
    file_over_theoretical: float = field(init=False)
    bytes_per_token: float = field(init=False)
    max_resident_before_cold: float = field(init=False)

    def __post_init__(self) -> None:
        full = self.full_prefill.median_s
        self.full_over_cag_ram = full / self.cag_ram.median_s
        self.full_over_cag_file_cold = full / self.cag_file_cold.median_s
        self.full_over_tutorial_cold = full / self.tutorial_cold.median_s
        hf_full = self.full_prefill_transformers.median_s
        self.transformers_full_over_cag_ram = hf_full / self.cag_ram.median_s
        self.transformers_full_over_cag_file_cold = hf_full / self.cag_file_cold.median_s
        self.restore_over_plain_read = self.restore_cold.median_s / self.plain_read_cold.median_s
        self.restore_gb_s = self.file_bytes / self.restore_cold.median_s / 1e9
        self.plain_read_gb_s = self.file_bytes / self.plain_read_cold.median_s / 1e9
        self.file_over_theoretical = self.file_bytes / self.theoretical_kv_bytes
        self.bytes_per_token = self.file_bytes / self.tokens
        self.max_resident_before_cold = max(self.cold_resident_fractions, default=0.0)


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    tokens: int
    value: float
    comparison: str  # ">=" or "<="
    threshold: float
    passed: bool


@dataclass(frozen=True, kw_only=True)
class MachineInfo:
    torch_version: str
    transformers_version: str
    python_version: str
    platform: str
    cpu_count: int | None
    torch_threads: int
    load_average_before: tuple[float, float, float]  # other work on the machine skews timings
    load_average_after: tuple[float, float, float]

    @classmethod
    def current(cls, load_before: tuple[float, float, float]) -> MachineInfo:
        import transformers

        return cls(
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            python_version=platform.python_version(),
            platform=platform.platform(),
            cpu_count=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
        )


@dataclass(frozen=True, kw_only=True)
class Parameters:
    model: str
    model_revision: str
    engine: str
    dtype: str
    sizes: tuple[int, ...]
    reps: int
    query_text: str
    query_tokens: int
    text_sources: tuple[str, ...]
    kv_shape: dict[str, int]
    theoretical_bytes_per_token: int
    max_resident_fraction: float
    workdir: str


@dataclass(frozen=True, kw_only=True)
class TtftReport:
    created_at: str
    machine: MachineInfo
    parameters: Parameters
    rows: list[SizeRow]
    targets: list[Target]

    @property
    def first_tokens_agree(self) -> bool:
        return all(r.cag_same_first_token and r.tutorial_same_first_token for r in self.rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---------------------------------------------------------------- workload


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    model: str
    sizes: tuple[int, ...]
    reps: int

    @property
    def total_steps(self) -> int:
        return 1 + len(self.sizes) * (1 + STEPS_PER_REP * self.reps)


@dataclass(frozen=True, kw_only=True)
class Workload:
    model: ModelFiles
    engine: Engine
    hf_model: Any  # transformers AutoModelForCausalLM, the tutorial baseline
    tokens: list[int]  # module text ids, at least max(sizes) long
    query: list[int]
    source_digest: str
    sources: tuple[str, ...]
    workdir: Path
    reps: int
    tick: Tick


def _repo_roots() -> list[Path]:
    return [Path.cwd(), Path(__file__).resolve().parents[3]]


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def knowledge_files() -> list[Path]:
    """The example knowledge markdown; any repository markdown when there is none (yet)."""
    for root in _repo_roots():
        found = sorted((root / "examples" / "knowledge").glob("*/*.md"))
        if found:
            return found
    for root in _repo_roots():
        patterns = ("*.md", "*/*.md", "*/*/*.md")
        found = sorted(p for pattern in patterns for p in root.glob(pattern) if _visible(p, root))
        if found:
            return found
    raise FileNotFoundError("no markdown found for the benchmark text (examples/knowledge/*/*.md)")


def module_token_ids(tokenizer: Any, text: str, count: int) -> list[int]:
    """The first `count` ids of `text`, repeated until it is long enough."""
    once = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if once == 0:
        raise ValueError("the benchmark text tokenizes to nothing")
    copies = -(-count // once) + 1
    ids = list(tokenizer("\n\n".join([text] * copies), add_special_tokens=False)["input_ids"])
    if len(ids) < count:
        raise ValueError(f"the benchmark text gives {len(ids)} tokens, {count} needed")
    return ids[:count]


def load_workload(config: BenchConfig, models_dir: Path, workdir: Path, tick: Tick) -> Workload:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = resolve_model(config.model, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model.tokenizer_path))
    files = knowledge_files()
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    hf_model: Any = AutoModelForCausalLM.from_pretrained(str(model.path), dtype=torch.float32)
    hf_model.eval()
    query = list(tokenizer(QUERY_TEXT, add_special_tokens=False)["input_ids"])
    # KV memory for the largest module and the query: every path runs in these preallocated buffers.
    capacity = min(max(config.sizes) + len(query) + RESERVE_SLACK, model.context_window)
    workload = Workload(
        model=model,
        engine=load_engine("torch", model, DTYPE, kv_capacity=capacity),
        hf_model=hf_model,
        tokens=module_token_ids(tokenizer, text, max(config.sizes)),
        query=query,
        source_digest=hashlib.sha256(text.encode()).hexdigest(),
        sources=tuple(str(f) for f in files),
        workdir=workdir,
        reps=config.reps,
        tick=tick,
    )
    warm_up(workload)
    tick("loaded model, text and tutorial baseline")
    return workload


def warm_up(w: Workload) -> None:
    """One small untimed pass through each code path, so no first-call cost lands in a timing.

    It also makes the engine allocate (and touch) its KV memory.
    """
    prefix = w.tokens[:32]
    full_prefill_first_token(w.engine, prefix, w.query)
    with torch.inference_mode():
        w.hf_model(input_ids=torch.tensor([prefix]), logits_to_keep=1)


# ---------------------------------------------------------------- module artifacts


def _ids_digest(ids: Sequence[int]) -> str:
    return hashlib.sha256(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes()).hexdigest()


def module_metadata(w: Workload, prefix: Sequence[int], path: Path) -> ModuleMetadata:
    ident, n = w.engine.identity, len(prefix)
    context = _ids_digest(prefix)
    layout = json.dumps({"benchmark": "ttft", "tokens": n, "sources": list(w.sources)}, sort_keys=True)
    return ModuleMetadata(
        module_id=f"bench-ttft-{n}",
        tenant_id="bench",
        route="bench/ttft",
        model_name=ident.model_name,
        model_revision=ident.model_revision,
        tokenizer_revision=ident.tokenizer_revision,
        context_checksum=context,
        source_checksum=w.source_digest,
        token_count=n,
        dtype=DTYPE,
        acl_scope=AclScope.PUBLIC,
        acl_principal="",
        created_at=None,
        expires_at=None,
        layout_id=f"bench-ttft-{n}",
        layout_hash=hashlib.sha256(layout.encode()).hexdigest(),
        layout=layout,
        parent_id=None,
        parent_chain_hash=None,
        chain_hash=chain_hash(parent_chain_hash=None, context_checksum=context),
        engine_fingerprint=ident.engine_fingerprint,
        golden_status=GoldenStatus.NONE,
        golden_results="[]",
    )


def save_tutorial_cache(k: torch.Tensor, v: torch.Tensor, path: Path) -> None:
    """The tutorial's artifact: a transformers DynamicCache with the same KV, torch.save'd.

    k, v: [layers, N, kv_heads, head_dim] (ours) -> [1, kv_heads, N, head_dim] per layer (transformers).
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(k.shape[0]):
        cache.update(k[layer].transpose(0, 1)[None].contiguous(), v[layer].transpose(0, 1)[None].contiguous(), layer)
    torch.save(cache, path)


@dataclass(frozen=True)
class Artifacts:
    module: Path
    tutorial: Path


def build_artifacts(w: Workload, prefix: Sequence[int]) -> Artifacts:
    n = len(prefix)
    rows = w.engine.prefill_module([], prefix)
    k, v = rows.k, rows.v  # [layers, n, kv_heads, head_dim]
    artifacts = Artifacts(w.workdir / f"module-{n}.safetensors", w.workdir / f"tutorial-{n}.pt")
    write_module(artifacts.module, module_metadata(w, prefix, artifacts.module), k, v, prefix)
    save_tutorial_cache(k, v, artifacts.tutorial)
    return artifacts


# ---------------------------------------------------------------- what is timed


# Every engine path runs in the engine's own KV memory, preallocated and touched once, as a serving
# engine's is: what is timed is the work of the path, not the page faults of freshly allocated buffers.


def full_prefill_first_token(engine: Engine, prefix: Sequence[int], query: Sequence[int]) -> int:
    request = GenerateRequest(chain=(), suffix=[*prefix, *query], sampling=FIRST_TOKEN)
    return next(engine.generate(request)).token_id


def restored_first_token(engine: Engine, source: KVSource, query: Sequence[int]) -> int:
    # Every repetition restores: the module the previous one left resident is not reused.
    engine.evict()
    # As the engine serves: rows read from disk overlap the query's forward pass; RAM copies do not.
    return next(engine.generate(GenerateRequest(chain=(source,), suffix=query, sampling=FIRST_TOKEN))).token_id


def file_first_token(engine: Engine, path: Path, query: Sequence[int]) -> int:
    return restored_first_token(engine, ModuleFile.open(path), query)


def restore_only(module: ModuleFile, k: torch.Tensor, v: torch.Tensor) -> None:
    """Every row of the module into preallocated k, v [layers, tokens, kv_heads, head_dim], checksum included."""
    for _ in module.read_rows(into=lambda layer: (k[layer], v[layer])):
        pass


def transformers_full_first_token(hf_model: Any, prompt_ids: torch.Tensor) -> int:
    with torch.inference_mode():
        out = hf_model(input_ids=prompt_ids, logits_to_keep=1)
    return int(out.logits[0, -1].argmax().item())


def tutorial_first_token(hf_model: Any, path: Path, query_ids: torch.Tensor) -> int:
    cache = torch.load(path, weights_only=False)
    with torch.inference_mode():
        out = hf_model(input_ids=query_ids, past_key_values=cache, logits_to_keep=1)
    return int(out.logits[0, -1].argmax().item())


def plain_read(path: Path, buffer: bytearray) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
    return total


# ---------------------------------------------------------------- measurement


def ensure_cold(path: Path, seen: list[float]) -> None:
    """Evict `path` and prove it with mincore; the fraction found is recorded in `seen`."""
    pagecache.evict(path)
    fraction = pagecache.resident_fraction(path)
    seen.append(fraction)
    if fraction > MAX_RESIDENT:
        raise NotColdError(f"{path}: {fraction:.1%} of its pages stayed in the page cache after eviction")


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def repeat(
    w: Workload, label: str, fn: Callable[[], T], before: Callable[[], None] | None = None
) -> tuple[Timing, list[T]]:
    """`reps` timed calls of `fn` (each after an untimed `before`): their timing and results."""
    samples, results = [], []
    for i in range(w.reps):
        if before is not None:
            before()
        elapsed, result = _timed(fn)
        samples.append(elapsed)
        results.append(result)
        w.tick(f"{label} {i + 1}/{w.reps}")
    return Timing.of(samples), results


def measure_ram(w: Workload, path: Path, query: list[int], label: str) -> tuple[Timing, list[int]]:
    loaded = ModuleFile.open(path).load()  # verified and in host RAM before timing
    return repeat(w, label, lambda: restored_first_token(w.engine, loaded, query))


def measure_throughput(w: Workload, path: Path, n: int, seen: list[float]) -> tuple[Timing, Timing]:
    module = ModuleFile.open(path)
    shape = w.engine.kv_shape
    # Touched, like the engine's own buffers: the page faults of fresh memory are not the restore's.
    k, v = (torch.zeros(shape.layers, n, shape.kv_heads, shape.head_dim, dtype=shape.dtype) for _ in range(2))
    buffer = bytearray(READ_BUFFER)
    cold = lambda: ensure_cold(path, seen)  # noqa: E731
    restore, _ = repeat(w, f"{n}: restore only (cold)", lambda: restore_only(module, k, v), cold)
    plain, _ = repeat(w, f"{n}: plain read (cold)", lambda: plain_read(path, buffer), cold)
    return restore, plain


def measure_size(w: Workload, n: int) -> SizeRow:
    prefix, query, seen = w.tokens[:n], w.query, list[float]()
    art = build_artifacts(w, prefix)
    w.tick(f"{n}: built module and tutorial cache")
    full, full_tok = repeat(w, f"{n}: full_prefill", lambda: full_prefill_first_token(w.engine, prefix, query))
    prompt_ids = torch.tensor([[*prefix, *query]])
    hf_full, _ = repeat(
        w, f"{n}: full_prefill (transformers)", lambda: transformers_full_first_token(w.hf_model, prompt_ids)
    )
    file_cold, file_tok = repeat(
        w,
        f"{n}: cag_file_cold",
        lambda: file_first_token(w.engine, art.module, query),
        lambda: ensure_cold(art.module, seen),
    )
    query_ids = torch.tensor([query])
    tutorial, tut_tok = repeat(
        w,
        f"{n}: tutorial_cold",
        lambda: tutorial_first_token(w.hf_model, art.tutorial, query_ids),
        lambda: ensure_cold(art.tutorial, seen),
    )
    restore, plain = measure_throughput(w, art.module, n, seen)
    ram, ram_tok = measure_ram(w, art.module, query, f"{n}: cag_ram")
    gc.collect()  # the loaded module's mapping is gone: nothing keeps pages of a benchmark file pinned
    first = full_tok[0]
    return SizeRow(
        tokens=n,
        query_tokens=len(query),
        full_prefill=full,
        full_prefill_transformers=hf_full,
        cag_ram=ram,
        cag_file_cold=file_cold,
        tutorial_cold=tutorial,
        restore_cold=restore,
        plain_read_cold=plain,
        file_bytes=art.module.stat().st_size,
        tutorial_file_bytes=art.tutorial.stat().st_size,
        theoretical_kv_bytes=n * w.engine.kv_shape.bytes_per_token,
        first_token=first,
        cag_same_first_token=set(full_tok + file_tok + ram_tok) == {first},
        tutorial_first_token=tut_tok[0],
        tutorial_same_first_token=set(tut_tok) == {first},
        cold_resident_fractions=seen,
    )


def evaluate_targets(rows: Sequence[SizeRow]) -> list[Target]:
    """Pass/fail at 4096 tokens (or the largest size measured)."""
    if not rows:
        return []
    row = next((r for r in rows if r.tokens == TARGET_TOKENS), max(rows, key=lambda r: r.tokens))
    checks = [
        ("full_over_cag_ram", row.full_over_cag_ram, ">=", 40.0),
        ("full_over_cag_file_cold", row.full_over_cag_file_cold, ">=", 30.0),
        ("restore_over_plain_read", row.restore_over_plain_read, "<=", 1.5),
        ("file_over_theoretical_deviation", abs(row.file_over_theoretical - 1), "<=", 0.01),
    ]
    return [
        Target(
            name=name, tokens=row.tokens, value=value, comparison=op, threshold=limit, passed=_holds(value, op, limit)
        )
        for name, value, op, limit in checks
    ]


def _holds(value: float, op: str, limit: float) -> bool:
    return value >= limit if op == ">=" else value <= limit


def _parameters(config: BenchConfig, w: Workload) -> Parameters:
    shape = w.engine.kv_shape
    return Parameters(
        model=w.model.name,
        model_revision=w.model.model_revision,
        engine="torch",
        dtype=DTYPE,
        sizes=config.sizes,
        reps=config.reps,
        query_text=QUERY_TEXT,
        query_tokens=len(w.query),
        text_sources=w.sources,
        kv_shape={"layers": shape.layers, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim},
        theoretical_bytes_per_token=shape.bytes_per_token,
        max_resident_fraction=MAX_RESIDENT,
        workdir=str(w.workdir),
    )


def run_benchmark(config: BenchConfig, models_dir: Path, tick: Tick) -> TtftReport:
    """The whole measurement, no printing: every size in one process, temp files removed after."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cag-bench-ttft-") as tmp:
        w = load_workload(config, models_dir, Path(tmp), tick)
        rows = [measure_size(w, n) for n in config.sizes]
    return TtftReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=MachineInfo.current(load_before),
        parameters=_parameters(config, w),
        rows=rows,
        targets=evaluate_targets(rows),
    )


# ---------------------------------------------------------------- command line


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers, not {value!r}") from e
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive token counts")
    return sizes


def register(sub: Any) -> None:
    p = sub.add_parser("ttft", help="time to first token: full prefill vs restoring a KV module (RAM, cold file)")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of a table")
    p.add_argument(
        "--sizes", type=_sizes, default=DEFAULT_SIZES, help="module sizes in tokens (default 1024,2048,4096)"
    )
    p.add_argument("--reps", type=positive_int, default=3, help="repetitions per measurement; medians are reported")
    p.add_argument(
        "--out", type=Path, help=f"where the JSON report is written (default {DEFAULT_OUT}, vLLM: ttft_vllm.json)"
    )
    p.add_argument("--model", default=SMOLLM2, help=f"catalog name or model folder (default {SMOLLM2})")
    p.add_argument(
        "--engine",
        choices=("torch", "vllm"),
        default="torch",
        help="torch: restores vs full prefill and the transformers tutorial; vllm: the connector's restores vs"
        " vLLM's full prefill and warm prefix hits, and concurrent answers vs the torch engine",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    if args.engine == "vllm":
        from cag.bench import ttft_vllm

        return ttft_vllm.run(args, settings)
    torch.set_num_threads(settings.num_threads or 2)
    config = BenchConfig(model=args.model, sizes=args.sizes, reps=args.reps)
    stderr = Console(stderr=True)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        task = progress.add_task("loading", total=config.total_steps)
        report = run_benchmark(config, settings.models_dir, lambda d: progress.update(task, advance=1, description=d))
    emit_report(
        report.to_json(),
        args.out or DEFAULT_OUT,
        as_json=args.json,
        render=lambda c: render(report, c),
        width=160,
        stderr=stderr,
    )
    if not report.first_tokens_agree:
        stderr.print("[red]first tokens disagree between paths (see *_same_first_token in the JSON)[/red]")
        return 1
    return 0


# ---------------------------------------------------------------- rendering


def _ms(t: Timing) -> str:
    return f"{t.median_s * 1e3:,.1f}"


def results_table(report: TtftReport) -> Table:
    p = report.parameters
    table = Table(title=f"TTFT, median of {p.reps} ({p.model} {p.dtype}, query {p.query_tokens} tokens, ms)")
    for name in ("tokens", "full", "full (hf)", "cag_ram", "cag_file_cold", "tutorial_cold"):
        table.add_column(name, justify="right")
    columns = ("full/ram", "full/file", "full/tutorial", "hf/ram", "hf/file", "restore vs plain read", "file/theory")
    for name in (*columns, "same 1st"):
        table.add_column(name, justify="right")
    for r in report.rows:
        table.add_row(
            str(r.tokens),
            _ms(r.full_prefill),
            _ms(r.full_prefill_transformers),
            _ms(r.cag_ram),
            _ms(r.cag_file_cold),
            _ms(r.tutorial_cold),
            f"{r.full_over_cag_ram:.1f}x",
            f"{r.full_over_cag_file_cold:.1f}x",
            f"{r.full_over_tutorial_cold:.1f}x",
            f"{r.transformers_full_over_cag_ram:.1f}x",
            f"{r.transformers_full_over_cag_file_cold:.1f}x",
            f"{_ms(r.restore_cold)} / {_ms(r.plain_read_cold)} = {r.restore_over_plain_read:.2f}x",
            f"{r.file_over_theoretical:.4f}",
            "yes" if r.cag_same_first_token and r.tutorial_same_first_token else "NO",
        )
    return table


def targets_table(report: TtftReport) -> Table:
    table = Table(title="targets")
    for name in ("target", "tokens", "value", "required", "result"):
        table.add_column(name)
    for t in report.targets:
        mark = "[green]pass[/green]" if t.passed else "[red]FAIL[/red]"
        table.add_row(t.name, str(t.tokens), f"{t.value:.3f}", f"{t.comparison} {t.threshold:g}", mark)
    return table


def render(report: TtftReport, console: Console) -> None:
    console.print(results_table(report))
    console.print(targets_table(report))
    m = report.machine
    load = ", ".join(f"{x:.2f}" for x in m.load_average_before)
    console.print(f"[dim]torch {m.torch_version}, {m.torch_threads} threads, {m.cpu_count} CPUs, load {load}[/dim]")
