"""`cag bench cacheweaver`'s plot (PNG): the distribution of time to first token per evidence ordering."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from cag.bench.matrix_plots import _pyplot, _save


def plot_ttft_cdf(samples: Mapping[str, Sequence[float]], out: Path, title: str) -> Path:
    """One cumulative distribution per ordering over its questions' TTFT (ms, log scale), median in the legend."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, seconds in samples.items():
        ms = sorted(s * 1e3 for s in seconds)
        share = [(i + 1) / len(ms) for i in range(len(ms))]
        axes.step(ms, share, where="post", label=f"{name} (median {statistics.median(ms):,.0f} ms)")
    axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("time to first token (ms, log scale)")
    axes.set_ylabel("share of questions")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(which="both", alpha=0.3)
    return _save(figure, out)
