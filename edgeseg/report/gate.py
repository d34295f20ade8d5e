"""Regression gate: compare a results file with a baseline and list what got worse.

Rows are matched by what was measured (target, runtime, precision, quantization, execution
precision, output stride, input shape, data), and by device only where the baseline holds the
same configuration on several devices. mIoU is compared in points; latency only as ratios
within one results file (each row's p50 over the p50 of an FP32 row on the same device: the same
runtime's where there is one, else the FP32 reference; FP32 rows themselves are not latency-gated),
so a baseline recorded on one machine gates a run on another machine of the same kind, and a
busier machine does not fail the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeseg.bench.results import BenchRow
from edgeseg.errors import ConfigError
from edgeseg.report.analysis import Entry, analyse, row_label


@dataclass(frozen=True)
class Tolerance:
    """How much worse a row may get: mIoU points, and the latency ratio's relative growth."""

    miou: float = 0.0
    latency: float = 0.25

    def check(self) -> Tolerance:
        if not (math.isfinite(self.miou) and 0 <= self.miou <= 100):
            raise ConfigError(f"--tolerance {self.miou} is out of range; give mIoU points in 0..100, e.g. --tolerance 0.3")
        if not (math.isfinite(self.latency) and 0 <= self.latency <= 10):
            raise ConfigError(f"--latency-tolerance {self.latency} is out of range; give a fraction in 0..10, e.g. 0.25 for 25 %")
        return self


def _key(row: BenchRow) -> tuple:
    data = None if not row.data or row.miou is None else (row.data.get("format"), row.data.get("split"))
    return (
        row.target,
        row.runtime,
        row.precision,
        row.quant_method,
        row.precision_hint,
        row.perf_hint,  # a throughput-mode row is another measurement than a latency-mode one
        row.output_stride,
        tuple(row.input_shape),
        data,
    )


def _name(e: Entry) -> str:
    return f"OS{e.row.output_stride} {row_label(e.row)} ({e.row.target}, {e.device})"


def _match(base: Entry, current: list[Entry], shared_keys: set[tuple]) -> Entry | None:
    candidates = [c for c in current if _key(c.row) == _key(base.row)]
    if _key(base.row) in shared_keys:  # the baseline has this configuration on several devices
        candidates = [c for c in candidates if c.device == base.device]
    return candidates[0] if candidates else None


def _ratio(e: Entry) -> float | None:
    """p50 over a same-device FP32 p50 (lower is better): the same runtime's FP32 row where there
    is one (both light, benched side by side), else the FP32 reference (torch eager). torch rows
    are references, not deployments: eager mode swings with load, so their latency is not gated."""
    if e.row.runtime == "torch":
        return None
    if e.runtime_speedup is not None and e.runtime_reference is not e.row:
        return 1 / e.runtime_speedup
    return None if e.speedup is None or e.reference is e.row or e.runtime_reference is e.row else 1 / e.speedup


def regressions(baseline: list[BenchRow], current: list[BenchRow], tolerance: Tolerance) -> list[str]:
    """One line per row of the baseline that is missing or worse in `current` (empty: no regression)."""
    tolerance.check()
    base, now = analyse(baseline), analyse(current)
    seen: dict[tuple, set[str]] = {}
    for e in base:
        seen.setdefault(_key(e.row), set()).add(e.device)
    shared = {k for k, devices in seen.items() if len(devices) > 1}
    problems = []
    for b in base:
        c = _match(b, now, shared)
        if c is None:
            problems.append(f"{_name(b)}: in the baseline, not in the results")
            continue
        if b.row.miou is not None and (c.row.miou is None or c.row.miou < b.row.miou - tolerance.miou):
            got = "not scored" if c.row.miou is None else f"{c.row.miou:.2f}"
            problems.append(f"{_name(b)}: mIoU {got} < baseline {b.row.miou:.2f} - {tolerance.miou:g}")
        rb, rc = _ratio(b), _ratio(c)
        if rb is not None and rc is not None and rc > rb * (1 + tolerance.latency):
            problems.append(
                f"{_name(b)}: latency {rc:.3f}x its FP32 row, baseline {rb:.3f}x (+{100 * (rc / rb - 1):.0f} % > {100 * tolerance.latency:g} %)"
            )
    return problems
