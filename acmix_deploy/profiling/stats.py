"""Latency statistics, computed with NumPy.

Percentiles are ``numpy.percentile(..., method="linear")``: linear interpolation between closest ranks
(Hyndman & Fan type 7, NumPy's and Excel's ``PERCENTILE.INC`` default): for sorted samples ``x_0..x_{n-1}``
the ``q``-th percentile is ``x_i + f * (x_{i+1} - x_i)`` with ``i + f = q / 100 * (n - 1)``.
Throughput is ``batch / mean latency`` (sustained samples per second over the timed runs).  Standard
deviation is the sample one (``ddof=1``), 0 for one run.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["PERCENTILE_METHOD", "percentile", "summarize"]

PERCENTILE_METHOD = "linear"  # numpy.percentile's method: type 7, named in every report's settings
_REPORTED = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` (in any order), by linear interpolation."""
    if len(values) == 0:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method=PERCENTILE_METHOD))


def summarize(times_ms: Sequence[float], batch: int) -> dict[str, float]:
    """Statistics of per-run latencies in milliseconds, for runs of ``batch`` samples."""
    if len(times_ms) == 0:
        raise ValueError("no timed runs")
    xs = np.asarray(times_ms, dtype=np.float64)
    n = int(xs.size)
    mean = float(xs.mean())
    p50, p90, p95, p99 = (float(v) for v in np.percentile(xs, _REPORTED, method=PERCENTILE_METHOD))
    return {
        "runs": n,
        "mean_ms": mean,
        "std_ms": float(xs.std(ddof=1)) if n > 1 else 0.0,
        "min_ms": float(xs.min()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": float(xs.max()),
        "throughput_per_s": batch * 1000.0 / mean if mean > 0 else math.inf,
    }
