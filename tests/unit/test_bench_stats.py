"""Latency statistics against hand-computed values (percentiles: linear interpolation, numpy's default)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeseg.bench.stats import latency_stats, percentile, throughput


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0, 10.0),  # rank 0
        (50, 25.0),  # rank 1.5: 20 + 0.5 * (30 - 20)
        (90, 37.0),  # rank 2.7: 30 + 0.7 * (40 - 30)
        (99, 39.7),  # rank 2.97
        (100, 40.0),
    ],
)
def test_percentile_by_hand(q: float, expected: float) -> None:
    assert percentile([40, 10, 30, 20], q) == pytest.approx(expected, abs=1e-12)


def test_latency_stats_by_hand() -> None:
    stats = latency_stats([float(v) for v in range(10, 0, -1)])  # 1..10 in reverse order
    assert stats["p50"] == pytest.approx(5.5)  # rank 4.5
    assert stats["p90"] == pytest.approx(9.1)  # rank 8.1
    assert stats["p99"] == pytest.approx(9.91)  # rank 8.91
    assert stats["mean"] == pytest.approx(5.5)
    assert stats["std"] == pytest.approx(math.sqrt(8.25))  # population: sum((k - 5.5)^2) / 10
    assert (stats["min"], stats["max"]) == (1.0, 10.0)


def test_single_sample_is_every_percentile() -> None:
    stats = latency_stats([3.25])
    assert stats["p50"] == stats["p90"] == stats["p99"] == stats["mean"] == 3.25 and stats["std"] == 0.0


@pytest.mark.parametrize("n", [2, 7, 50, 1001])
def test_percentile_is_numpy_linear(n: int) -> None:
    samples = np.random.default_rng(n).lognormal(1.0, 0.5, n)
    for q in (1, 50, 90, 99, 99.9):
        assert percentile(samples, q) == pytest.approx(np.percentile(samples, q, method="linear"), rel=1e-12)


def test_throughput_counts_the_batch() -> None:
    # 3 calls of batch 2 in 40 ms: 6 images / 0.04 s
    assert throughput([10.0, 10.0, 20.0], batch=2) == pytest.approx(150.0)


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"^no latency samples: use --runs 1 or more$"):
        latency_stats([])
    with pytest.raises(ValueError, match=r"^percentile 101 is outside 0\.\.100$"):
        percentile([1.0], 101)
