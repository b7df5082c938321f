"""Percentiles of a latency over a recent window: what `Stats` reports of the pool's time to first token.

Prometheus histograms (cag.telemetry.metrics) keep every observation since the process started, in fixed buckets;
an operator watching the pool wants the last few minutes, exactly. The window keeps the samples of the last
`window_s` seconds, at most `max_samples` of them (the oldest go first), and answers nearest-rank percentiles.

Pure: callers pass `now` (seconds on one monotonic clock of their choice) with every call.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from cag.errors import InvalidFieldError


@dataclass(frozen=True, kw_only=True)
class LatencySummary:
    """Percentiles of the samples in the window, seconds; 0.0 each when `samples` is 0."""

    samples: int
    p50_s: float
    p99_s: float


class LatencyWindow:
    def __init__(self, *, window_s: float = 300.0, max_samples: int = 4096) -> None:
        if window_s <= 0 or max_samples < 1:
            raise InvalidFieldError(
                "latency window", f"needs window_s > 0 and max_samples >= 1, got {window_s}, {max_samples}"
            )
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (recorded at, seconds)

    def record(self, seconds: float, now: float) -> None:
        """One observation of `seconds`, made at `now`."""
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidFieldError("latency", f"must be a finite number of seconds >= 0, got {seconds}")
        self._forget_before(now)
        self._samples.append((now, seconds))

    def summary(self, now: float) -> LatencySummary:
        """p50 and p99 of the samples recorded in (now - window_s, now]."""
        self._forget_before(now)
        ordered = sorted(seconds for _, seconds in self._samples)
        if not ordered:
            return LatencySummary(samples=0, p50_s=0.0, p99_s=0.0)
        return LatencySummary(samples=len(ordered), p50_s=nearest_rank(ordered, 50), p99_s=nearest_rank(ordered, 99))

    def _forget_before(self, now: float) -> None:
        while self._samples and self._samples[0][0] <= now - self.window_s:
            self._samples.popleft()


def nearest_rank(ordered: list[float], percent: float) -> float:
    """The nearest-rank percentile (`percent` in (0, 100]) of a non-empty ascending list: the smallest sample
    with at least `percent`% of the samples at or below it."""
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]
