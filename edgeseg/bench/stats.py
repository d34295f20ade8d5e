"""Latency statistics: percentiles by linear interpolation between order statistics.

The percentile method is numpy's default "linear" (Hyndman and Fan type 7): for sorted samples
x[0..n-1], the q-th percentile sits at rank r = q/100 * (n - 1) and is
x[floor(r)] + (r - floor(r)) * (x[floor(r) + 1] - x[floor(r)]). It is what most benchmark tools
report and it is exact on the samples (p0 = min, p100 = max). The standard deviation is the
population one (ddof=0): the timed runs are the whole population being described.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of `samples` by linear interpolation (see module docstring)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    if x.size == 0:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    rank = q / 100 * (x.size - 1)
    lo = int(np.floor(rank))
    hi = min(lo + 1, x.size - 1)
    return float(x[lo] + (rank - lo) * (x[hi] - x[lo]))


def latency_stats(samples_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50, p90, p99, mean, std (population), min and max of latency samples in milliseconds."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples: use --runs 1 or more")
    out = {f"p{q}": percentile(x, q) for q in PERCENTILES}
    out.update(mean=float(x.mean()), std=float(x.std()), min=float(x.min()), max=float(x.max()))
    return out


def throughput(samples_ms: Sequence[float] | np.ndarray, batch: int) -> float:
    """Images per second over the timed runs: batch * runs / total time."""
    total_s = float(np.sum(samples_ms)) / 1000
    return batch * len(samples_ms) / total_s if total_s > 0 else float("inf")
