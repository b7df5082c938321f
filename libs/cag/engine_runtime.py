"""Runtime tuning of every process that hosts an engine: OpenMP spinning and the number of compute threads.

Call `tune_engine_runtime` once, at the entry point, before torch is imported (the CLI's `main`, a benchmark's
`main`, the test session's conftest). Torch-free on purpose: importing `cag.engine` loads torch, which reads
its OpenMP settings as it loads, too late to change them.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from dataclasses import dataclass

# OpenMP threads spin for a long time after each kernel by default; while a restore streams a module in the
# background that spinning starves the reader thread on a small machine and makes time to first token
# bimodal. A short spin keeps kernels fast and the reader fed.
GOMP_SPINCOUNT = "10000"


@dataclass(frozen=True, kw_only=True)
class EngineRuntime:
    """What `tune_engine_runtime` did in this process."""

    gomp_spincount: str  # the value the OpenMP runtime reads (the user's own wins over ours)
    num_threads: int | None  # compute threads asked for; None: torch's default
    before_torch: bool  # True when torch was not loaded yet, so the OpenMP settings take effect


# The first tuning of this process: the one the OpenMP runtime saw (later calls, from an in-process CLI for
# instance, only change the thread count).
applied: EngineRuntime | None = None


def tune_engine_runtime(num_threads: int | None, environ: MutableMapping[str, str]) -> EngineRuntime:
    """Apply the tuning to this process; `environ` is the process environment (os.environ), handed down by the
    entry point. `num_threads`: CAG_NUM_THREADS (cag.settings.CagSettings.num_threads)."""
    global applied
    before_torch = "torch" not in sys.modules
    environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    if num_threads:
        if before_torch:
            # Torch sizes its intra-op pool from it as it loads (the OpenMP runtime caps it at the core count).
            environ["OMP_NUM_THREADS"] = str(num_threads)
        else:
            sys.modules["torch"].set_num_threads(num_threads)
    tuned = EngineRuntime(gomp_spincount=environ["GOMP_SPINCOUNT"], num_threads=num_threads, before_torch=before_torch)
    if applied is None:
        applied = tuned
    return tuned
