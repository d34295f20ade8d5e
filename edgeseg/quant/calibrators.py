"""Calibration: collect |x| statistics of a tensor, then choose its range (amax) by a method.

Methods (those of TensorRT's calibrators and NVIDIA's pytorch-quantization):
- max: the largest |x| seen. Keeps every outlier; wastes resolution when there are a few.
- percentile: the |x| below which `percentile` % of the values lie (99.99 by default).
- mse: the range that minimises the expected squared quantization error over the histogram.
- entropy: the range whose quantized distribution is closest in KL divergence to the float
  one (TensorRT's entropy calibrator, after Migacz, "8-bit inference with TensorRT", 2017).

The histogram is of |x| with a fixed bin width set by the first batch; when a later batch goes
beyond it, bins of the same width are appended (and pairs merged when it grows too long).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgeseg.constants import check_calib_method
from edgeseg.quant.fake_quant import QMAX

NUM_BINS = 2048
_MAX_BINS = 4 * NUM_BINS
# Signed 8-bit: 128 levels on each side of zero.
_LEVELS = QMAX + 1


class Calibrator:
    """Collects max |x| and (unless the method is max) a histogram of |x| for one tensor."""

    def __init__(self, method: str = "percentile", num_bins: int = NUM_BINS) -> None:
        self.method = check_calib_method(method, "calibration method")
        self.num_bins = num_bins
        self.amax = 0.0
        self.count = 0
        self.counts: np.ndarray | None = None
        self.width = 0.0
        self._zeros = 0  # values seen while every value so far was 0 (no bin width yet)

    def collect(self, x: torch.Tensor) -> None:
        """Add a tensor's values to the statistics."""
        a = x.detach().float().abs().flatten()
        if a.numel() == 0:
            return
        m = float(a.max())
        self.amax = max(self.amax, m)
        self.count += a.numel()
        if self.method == "max":
            return
        if self.counts is None:
            if m == 0.0:
                self._zeros += a.numel()
                return
            self.width = m / self.num_bins
            self.counts = np.zeros(self.num_bins, np.float64)
            self.counts[0] += self._zeros
        if int(m / self.width) + 1 > len(self.counts):
            self._grow(m)
        n = int(m / self.width) + 1
        hist = torch.histc(a, bins=n, min=0.0, max=n * self.width)
        self.counts[:n] += hist.double().cpu().numpy()

    def _grow(self, m: float) -> None:
        """Append bins of the current width up to m, merging pairs while there are too many."""
        counts = self.counts if self.counts is not None else np.zeros(0)
        while True:
            need = int(m / self.width) + 1
            if need > len(counts):
                counts = np.concatenate([counts, np.zeros(need - len(counts))])
            if len(counts) <= _MAX_BINS:
                break
            if len(counts) % 2:
                counts = np.append(counts, 0.0)
            counts = counts.reshape(-1, 2).sum(1)
            self.width *= 2
        self.counts = counts

    def compute(self, percentile: float = 99.99, method: str | None = None) -> float:
        """The range chosen by `method` (default: this calibrator's; 0.0 when nothing was collected).

        Any method can be computed from a calibrator that collected a histogram (any but max).
        """
        method = method or self.method
        if method == "max" or self.counts is None:
            return self.amax
        if method == "percentile":
            value = percentile_amax(self.counts, self.width, percentile)
        elif method == "mse":
            value = mse_amax(self.counts, self.width)
        else:
            value = entropy_amax(self.counts, self.width)
        return min(value, self.amax)


def percentile_amax(counts: np.ndarray, width: float, percentile: float) -> float:
    """Upper edge of the bin where the cumulative share of |x| reaches `percentile` %."""
    cdf = np.cumsum(counts) / max(counts.sum(), 1.0)
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return (min(idx, len(counts) - 1) + 1) * width


def _candidates(n: int, start: int, max_steps: int = 512) -> np.ndarray:
    stride = max(1, math.ceil((n - start) / max_steps))
    first = min(start, n)
    return np.unique(np.concatenate([np.arange(first, n + 1, stride), [n]]))


def mse_amax(counts: np.ndarray, width: float, start: int = _LEVELS) -> float:
    """Range minimising sum(count * (c - Q(c))^2) over bin centres c, Q the INT8 fake quant."""
    centers = (np.arange(len(counts)) + 0.5) * width
    best, best_err = float(len(counts) * width), math.inf
    for i in _candidates(len(counts), start):
        amax = i * width
        scale = amax / QMAX
        q = np.clip(np.round(centers / scale), -_LEVELS, QMAX) * scale
        err = float(np.dot(counts, (centers - q) ** 2))
        if err < best_err:
            best, best_err = float(amax), err
    return best


def _kl(counts: np.ndarray, i: int) -> float:
    """KL(P || Q) of the histogram clipped at bin i (tail into the last bin) vs. its 128-level Q."""
    ref = counts[:i].copy()
    ref[-1] += counts[i:].sum()
    chunk = (np.arange(i) * _LEVELS) // i
    nonzero = counts[:i] > 0
    mass = np.bincount(chunk, weights=counts[:i], minlength=_LEVELS)
    used = np.bincount(chunk, weights=nonzero.astype(np.float64), minlength=_LEVELS)
    quant = np.where(nonzero, mass[chunk] / np.maximum(used[chunk], 1.0), 0.0)
    p = ref / ref.sum()
    q = quant / max(quant.sum(), 1e-300)
    mask = p > 0
    if np.any(q[mask] == 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_amax(counts: np.ndarray, width: float, start: int = _LEVELS) -> float:
    """TensorRT's entropy calibration: the clip bin i minimising KL(P || Q), the last of ties.

    As in TensorRT's reference, the first bin (the exact zeros after a ReLU, which every range
    represents exactly) is replaced by its neighbour so it does not dominate the divergence.
    """
    counts = counts.astype(np.float64).copy()
    if len(counts) > 1:
        counts[0] = counts[1]
    if counts.sum() == 0:
        return len(counts) * width
    best_i, best_kl = len(counts), math.inf
    for i in _candidates(len(counts), start):
        kl = _kl(counts, int(i))
        if kl <= best_kl:
            best_i, best_kl = int(i), kl
    return best_i * width
