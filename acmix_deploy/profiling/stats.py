"""Latency statistics.

Percentiles use linear interpolation between closest ranks (NumPy's default,
Hyndman & Fan type 7): for sorted samples ``x_0..x_{n-1}`` the ``q``-th
percentile is ``x_i + f * (x_{i+1} - x_i)`` with ``i + f = q / 100 * (n - 1)``.
Throughput is ``batch / mean latency`` (sustained samples per second over the
timed runs).  Standard deviation is the sample one (``n - 1``), 0 for one run.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["percentile", "summarize"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    pos = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def summarize(times_ms: Sequence[float], batch: int) -> dict[str, float]:
    """Statistics of per-run latencies in milliseconds, for runs of ``batch`` samples."""
    if not times_ms:
        raise ValueError("no timed runs")
    xs = sorted(float(t) for t in times_ms)
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    out = {
        "runs": n,
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": xs[0],
        "p50_ms": percentile(xs, 50),
        "p90_ms": percentile(xs, 90),
        "p95_ms": percentile(xs, 95),
        "p99_ms": percentile(xs, 99),
        "max_ms": xs[-1],
        "throughput_per_s": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }
    return out
