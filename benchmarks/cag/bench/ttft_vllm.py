"""`cag bench ttft --engine vllm`: vLLM's time to first token with modules restored by the platform's connector.

Per module size, the same tokens and query, in one run, medians of `reps`:
- `full_prefill`: vLLM prefills module text and query (its prefix cache emptied first);
- `restore_ram`: the module's verified host-RAM copy written into vLLM's blocks by the connector, then the query;
- `restore_cold`: the same from the module file, evicted from the page cache first (mincore-checked);
- `warm_prefix_hit`: vLLM's own prefix cache already holds the text (a second identical prefix): only what
  follows the last whole cached block is computed.
Then answers per second on one resident module with 1, 4 and 16 concurrent clients, vLLM vs the torch engine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cag.bench.output import emit_report
from cag.bench.ttft import (
    FIRST_TOKEN,
    QUERY_TEXT,
    Timing,
    Workload,
    ensure_cold,
    knowledge_files,
    module_metadata,
    module_token_ids,
)
from cag.engine import Engine, GenerateRequest, SamplingParams, load_engine
from cag.kvmodule import KVSource, ModuleFile, write_module
from cag.models import resolve_model
from cag.settings import CagSettings

DEFAULT_OUT = Path("benchmarks/results/ttft_vllm.json")
DTYPE = "fp32"
TARGET_TOKENS = 4096
RAM_OVER_WARM_LIMIT = 1.5
COLD_OVER_WARM_LIMIT = 2.5
CLIENTS = (1, 4, 16)
CONCURRENCY_TOKENS = 1024
ANSWERS_PER_CLIENT = 2
ANSWER = SamplingParams(max_new_tokens=32)
Tick = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class SizeRow:
    tokens: int
    full_prefill: Timing
    restore_ram: Timing
    restore_cold: Timing
    warm_prefix_hit: Timing
    restored_tokens: int  # what the connector wrote in the restore runs (proves it loaded)
    same_first_token: bool  # every path answered the full prefill's first token
    full_over_restore_ram: float
    restore_ram_over_warm: float
    restore_cold_over_warm: float


@dataclass(frozen=True, kw_only=True)
class ConcurrencyRow:
    clients: int
    answers: int
    vllm_answers_per_s: float
    torch_answers_per_s: float
    vllm_over_torch: float


@dataclass(frozen=True, kw_only=True)
class VllmTtftReport:
    created_at: str
    model: str
    dtype: str
    reps: int
    query_tokens: int
    cpu_count: int | None
    load_average: tuple[float, float, float]
    rows: list[SizeRow]
    concurrency: list[ConcurrencyRow]
    targets: dict[str, dict[str, float | bool]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _ttft(engine: Engine, chain: Sequence[KVSource], suffix: Sequence[int]) -> tuple[float, int, int]:
    """Seconds to the first token, that token, and the chain tokens the engine restored."""
    started = time.perf_counter()
    first = next(iter(engine.generate(GenerateRequest(chain=chain, suffix=suffix, sampling=FIRST_TOKEN))))
    return time.perf_counter() - started, first.token_id, first.timings.restored_tokens


def _median_of(
    reps: int, run: Callable[[], tuple[float, int, int]], before: Callable[[], None]
) -> tuple[Timing, set[int], int]:
    samples, tokens, restored = [], set[int](), 0
    for _ in range(reps):
        before()
        seconds, token, restored = run()
        samples.append(seconds)
        tokens.add(token)
    return Timing.of(samples), tokens, restored


def measure_size(engine: Engine, w: Workload, n: int, reps: int, tick: Tick) -> SizeRow:
    prefix, query = w.tokens[:n], w.query
    path = w.workdir / f"module-{n}.safetensors"
    rows = engine.prefill_module([], prefix)
    write_module(path, module_metadata(w, prefix, path), rows.k, rows.v, prefix)
    del rows
    seen: list[float] = []

    def cold() -> None:
        engine.evict()
        ensure_cold(path, seen)

    full, full_tok, _ = _median_of(reps, lambda: _ttft(engine, (), [*prefix, *query]), engine.evict)
    tick(f"{n}: full prefill")
    # Cold before RAM: the host-RAM copy maps the file, and mapped pages cannot be evicted.
    file_cold, cold_tok, _ = _median_of(reps, lambda: _ttft(engine, [ModuleFile.open(path)], query), cold)
    tick(f"{n}: restore from a cold file")
    loaded = ModuleFile.open(path).load()
    ram, ram_tok, restored = _median_of(reps, lambda: _ttft(engine, [loaded], query), engine.evict)
    tick(f"{n}: restore from RAM")

    def warm() -> None:  # vLLM's prefix cache holds the text from an identical earlier prefix
        engine.evict()
        _ttft(engine, (), [*prefix, *query])

    warm_hit, warm_tok, _ = _median_of(reps, lambda: _ttft(engine, (), [*prefix, *query]), warm)
    tick(f"{n}: warm prefix hit")
    return SizeRow(
        tokens=n,
        full_prefill=full,
        restore_ram=ram,
        restore_cold=file_cold,
        warm_prefix_hit=warm_hit,
        restored_tokens=restored,
        same_first_token=len(full_tok | ram_tok | cold_tok | warm_tok) == 1,
        full_over_restore_ram=full.median_s / ram.median_s,
        restore_ram_over_warm=ram.median_s / warm_hit.median_s,
        restore_cold_over_warm=file_cold.median_s / warm_hit.median_s,
    )


def answers_per_second(engine: Engine, module: KVSource, query: Sequence[int], clients: int) -> float:
    """`clients` threads, each asking ANSWERS_PER_CLIENT answers in turn on the (resident) module."""
    engine.load([module])
    suffixes = [[*query[:-1], 100 + c] for c in range(clients)]  # distinct questions of the same length

    def client(suffix: list[int]) -> int:
        for _ in range(ANSWERS_PER_CLIENT):
            list(engine.generate(GenerateRequest(chain=[module], suffix=suffix, sampling=ANSWER)))
        return ANSWERS_PER_CLIENT

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = sum(pool.map(client, suffixes))
    return answers / (time.perf_counter() - started)


def measure_concurrency(engines: dict[str, Engine], w: Workload, tick: Tick) -> list[ConcurrencyRow]:
    prefix = w.tokens[:CONCURRENCY_TOKENS]
    path = w.workdir / "concurrency.safetensors"
    rows = engines["vllm"].prefill_module([], prefix)
    write_module(path, module_metadata(w, prefix, path), rows.k, rows.v, prefix)
    module = ModuleFile.open(path).load()
    result = []
    for clients in CLIENTS:
        rate = {kind: answers_per_second(engine, module, w.query, clients) for kind, engine in engines.items()}
        tick(f"{clients} concurrent clients")
        result.append(
            ConcurrencyRow(
                clients=clients,
                answers=clients * ANSWERS_PER_CLIENT,
                vllm_answers_per_s=rate["vllm"],
                torch_answers_per_s=rate["torch"],
                vllm_over_torch=rate["vllm"] / rate["torch"],
            )
        )
    return result


def _targets(rows: Sequence[SizeRow]) -> dict[str, dict[str, float | bool]]:
    row = next((r for r in rows if r.tokens == TARGET_TOKENS), max(rows, key=lambda r: r.tokens))
    return {
        "restore_ram_over_warm": {
            "tokens": row.tokens,
            "value": row.restore_ram_over_warm,
            "limit": RAM_OVER_WARM_LIMIT,
            "passed": row.restore_ram_over_warm <= RAM_OVER_WARM_LIMIT,
        },
        "restore_cold_over_warm": {
            "tokens": row.tokens,
            "value": row.restore_cold_over_warm,
            "limit": COLD_OVER_WARM_LIMIT,
            "passed": row.restore_cold_over_warm <= COLD_OVER_WARM_LIMIT,
        },
    }


def run_benchmark(model_name: str, sizes: Sequence[int], reps: int, models_dir: Path, tick: Tick) -> VllmTtftReport:
    from transformers import AutoTokenizer

    model = resolve_model(model_name, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model.tokenizer_path))
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in knowledge_files())
    query = list(tokenizer(QUERY_TEXT, add_special_tokens=False)["input_ids"])
    capacity = min(max(sizes) + len(query) + 256, model.context_window)
    vllm = load_engine("vllm", model, DTYPE, kv_capacity=max(capacity, 16 * (CONCURRENCY_TOKENS + 256)))
    tick("loaded vLLM")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cag-bench-ttft-vllm-") as tmp:
        w = _workload(model, vllm, module_token_ids(tokenizer, text, max(sizes)), query, Path(tmp))
        _ttft(vllm, (), w.tokens[:32] + query)  # warm-up: no first-call cost in a timing
        rows = [measure_size(vllm, w, n, reps, tick) for n in sizes]
        torch_engine = load_engine("torch", model, DTYPE, kv_capacity=CONCURRENCY_TOKENS + 16 * 256)
        concurrency = measure_concurrency({"vllm": vllm, "torch": torch_engine}, w, tick)
    vllm.close()
    return VllmTtftReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model.name,
        dtype=DTYPE,
        reps=reps,
        query_tokens=len(query),
        cpu_count=os.cpu_count(),
        load_average=load_before,
        rows=rows,
        concurrency=concurrency,
        targets=_targets(rows),
    )


def _workload(model: Any, engine: Engine, tokens: list[int], query: list[int], workdir: Path) -> Workload:
    return Workload(
        model=model,
        engine=engine,
        hf_model=None,
        tokens=tokens,
        query=query,
        source_digest="",
        sources=tuple(str(f) for f in knowledge_files()),
        workdir=workdir,
        reps=0,
        tick=lambda _: None,
    )


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    stderr = Console(stderr=True)
    steps = 1 + 4 * len(args.sizes) + len(CLIENTS)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        task = progress.add_task("loading", total=steps)
        report = run_benchmark(
            args.model,
            args.sizes,
            args.reps,
            settings.models_dir,
            lambda d: progress.update(task, advance=1, description=d),
        )
    out = DEFAULT_OUT if args.out is None else args.out
    emit_report(report.to_json(), out, as_json=args.json, render=lambda c: render(report, c), width=140, stderr=stderr)
    if not all(r.same_first_token for r in report.rows):
        stderr.print("[red]first tokens disagree between paths (same_first_token in the JSON)[/red]")
        return 1
    return 0


def render(report: VllmTtftReport, console: Console) -> None:
    table = Table(title=f"vLLM TTFT, median of {report.reps} ({report.model} {report.dtype}, ms)")
    for name in ("tokens", "full prefill", "restore RAM", "restore cold", "warm prefix hit", "full/RAM"):
        table.add_column(name, justify="right")
    for name in ("RAM/warm", "cold/warm", "restored", "same 1st"):
        table.add_column(name, justify="right")
    for r in report.rows:
        table.add_row(
            str(r.tokens),
            *(f"{t.median_s * 1e3:,.1f}" for t in (r.full_prefill, r.restore_ram, r.restore_cold, r.warm_prefix_hit)),
            f"{r.full_over_restore_ram:.1f}x",
            f"{r.restore_ram_over_warm:.2f}x",
            f"{r.restore_cold_over_warm:.2f}x",
            str(r.restored_tokens),
            "yes" if r.same_first_token else "NO",
        )
    console.print(table)
    rates = Table(title=f"answers/s on one {CONCURRENCY_TOKENS}-token module ({ANSWER.max_new_tokens} new tokens)")
    for name in ("clients", "answers", "vLLM", "torch", "vLLM/torch"):
        rates.add_column(name, justify="right")
    for c in report.concurrency:
        rates.add_row(
            str(c.clients),
            str(c.answers),
            f"{c.vllm_answers_per_s:.2f}",
            f"{c.torch_answers_per_s:.2f}",
            f"{c.vllm_over_torch:.1f}x",
        )
    console.print(rates)
    for name, t in report.targets.items():
        mark = "[green]pass[/green]" if t["passed"] else "[red]FAIL[/red]"
        console.print(f"{name} at {t['tokens']} tokens: {t['value']:.2f} (limit {t['limit']}) {mark}")
