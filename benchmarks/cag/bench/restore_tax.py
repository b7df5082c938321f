"""The restore tax: what answering on a module resident in the engine costs over the ideal.

TTFT of a request on a module already resident in the engine (shared rows, attended over in place, the
request's own rows elsewhere) divided by the TTFT of the same query appended to one contiguous KV cache that
already holds the module's rows (the single-buffer path: no placement, one attention per layer). Both run the
same model in the same process, alternately, after one untimed pass each.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cag.engine import GenerateRequest, SamplingParams
from cag.engine.cache import KVCache
from cag.engine.torch_engine import TorchEngine
from cag.kvmodule import ModuleFile

FIRST_TOKEN = SamplingParams(max_new_tokens=1)


@dataclass(frozen=True, kw_only=True)
class RestoreTax:
    module_tokens: int
    query_tokens: int
    resident_ttft_ms: float  # median
    contiguous_ttft_ms: float  # median
    ratio: float  # resident / contiguous
    resident_samples_ms: tuple[float, ...]
    contiguous_samples_ms: tuple[float, ...]


def measure_restore_tax(
    engine: TorchEngine, module_path: Path, query: Sequence[int], reps: int, tick: Callable[[str], None]
) -> RestoreTax:
    module = ModuleFile.open(module_path)
    engine.load([module])  # resident and verified before anything is timed
    contiguous = KVCache(engine.kv_shape, module.token_count + len(query) + 1)
    contiguous.k.zero_()
    contiguous.v.zero_()
    for _ in module.read_rows(into=contiguous.rows_target(0, module.token_count)):
        pass

    def resident() -> int:
        request = GenerateRequest(chain=[module], suffix=query, sampling=FIRST_TOKEN)
        return next(engine.generate(request)).token_id

    def single_buffer() -> int:
        contiguous.length = module.token_count  # the module's rows stay; the last query's rows are overwritten
        logits = engine.model.forward(torch.tensor(list(query), dtype=torch.long), contiguous)
        return int(logits.argmax().item())

    if resident() != single_buffer():  # the untimed first pass of each path doubles as an exactness check
        raise AssertionError("the resident and single-buffer paths disagree on the first token")
    on_module: list[float] = []
    on_buffer: list[float] = []
    for i in range(reps):
        for samples, path in ((on_module, resident), (on_buffer, single_buffer)):
            began = time.perf_counter()
            path()
            samples.append((time.perf_counter() - began) * 1e3)
        tick(f"restore tax {i + 1}/{reps}")
    resident_ms, contiguous_ms = statistics.median(on_module), statistics.median(on_buffer)
    return RestoreTax(
        module_tokens=module.token_count,
        query_tokens=len(query),
        resident_ttft_ms=resident_ms,
        contiguous_ttft_ms=contiguous_ms,
        ratio=resident_ms / contiguous_ms,
        resident_samples_ms=tuple(on_module),
        contiguous_samples_ms=tuple(on_buffer),
    )
