"""The evaluation matrix's plots (PNG, matplotlib without a display): the TTFT distribution per baseline, and
accuracy against median TTFT."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cag.bench.matrix_metrics import BASELINES, BaselineSummary, Sample


def plot_ttft_distribution(samples: Mapping[str, Sequence[Sample]], out: Path, title: str) -> Path:
    """A box per baseline over its answered questions' TTFT (ms, log scale), every sample drawn over it."""
    plt = _pyplot()
    names = [b for b in BASELINES if any(s.ttft_s is not None for s in samples.get(b, ()))]
    values = [[s.ttft_s * 1e3 for s in samples[b] if s.ttft_s is not None] for b in names]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.boxplot(values, tick_labels=names, showfliers=False)
    for i, row in enumerate(values, start=1):
        # Spread each baseline's points sideways a little so that equal times stay visible.
        offsets = [(j % 7 - 3) * 0.03 for j in range(len(row))]
        axes.scatter([i + o for o in offsets], row, s=8, alpha=0.5)
    axes.set_yscale("log")
    axes.set_ylabel("time to first token (ms, log scale)")
    axes.set_title(title)
    axes.grid(axis="y", which="both", alpha=0.3)
    return _save(figure, out)


def plot_accuracy_vs_ttft(summaries: Mapping[str, BaselineSummary], out: Path, title: str) -> Path:
    """One point per baseline: median TTFT (ms, log scale) against answer accuracy."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in (b for b in BASELINES if b in summaries):
        s = summaries[name]
        if s.ttft_p50_s is None:
            continue
        axes.scatter([s.ttft_p50_s * 1e3], [s.accuracy * 100], s=60)
        axes.annotate(name, (s.ttft_p50_s * 1e3, s.accuracy * 100), textcoords="offset points", xytext=(6, 6))
    axes.set_xscale("log")
    axes.set_xlabel("median time to first token (ms, log scale)")
    axes.set_ylabel("answer accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.grid(which="both", alpha=0.3)
    return _save(figure, out)


def _pyplot() -> Any:  # matplotlib.pyplot, imported only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    # No timestamps in the file: the same figures give the same bytes.
    figure.savefig(out, dpi=110, metadata={"Software": None})
    figure.clf()
    return out
