"""What the report says about a set of rows: FP32 references, mIoU deltas, speed-ups, Pareto fronts.

Rows are grouped by device (its label: CPU or GPU, and OS) and by the data they were scored on;
latency compares only within a device, mIoU only on the same data and output stride.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeseg.bench.device import device_label
from edgeseg.bench.results import BenchRow, runtime_label

# Execution precision of each artifact precision when no hint lowers it.
_NATIVE_HINT = {"fp32": "f32", "fp16": "f16"}


@dataclass
class Entry:
    """A row with what the report derives from it."""

    row: BenchRow
    device: str  # device_label of the row
    data: str  # 'format/split' the mIoU was scored on ('-' without accuracy)
    reference: BenchRow | None  # the FP32 row its mIoU is compared with
    same_device_reference: bool  # reference measured on the same device (speed ratio valid)
    delta_miou: float | None
    speedup: float | None  # reference p50 / row p50, same device only
    pareto: bool

    @property
    def label(self) -> str:
        return row_label(self.row)


def row_label(row: BenchRow) -> str:
    """'INT8 (qat) OpenVINO', 'FP32 (bf16 exec) OpenVINO', 'FP32 torch'."""
    return f"{precision_label(row)} {runtime_label(row.runtime)}"


def precision_label(row: BenchRow) -> str:
    """'INT8 (qat)', 'FP32 (bf16 exec)', 'FP16': the precision with its quantization method and any
    lower execution precision."""
    prec = row.precision.upper()
    if row.quant_method and row.precision in ("int8", "fakequant"):
        prec += f" ({row.quant_method})"
    hint = row.precision_hint
    if hint and row.precision in _NATIVE_HINT and hint != _NATIVE_HINT[row.precision]:
        prec += f" ({hint} exec)"
    return prec


def data_key(row: BenchRow) -> str:
    if not row.data or row.miou is None:
        return "-"
    return f"{row.data.get('format')}/{row.data.get('split')}"


def is_fp32_reference(row: BenchRow) -> bool:
    """FP32 executed in FP32 (an FP32 OpenVINO artifact run in bf16 is not a reference)."""
    return row.precision == "fp32" and row.precision_hint in (None, "f32") and row.miou is not None


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which (miou, latency) points no other point dominates (mIoU >= and latency <=, one strictly)."""
    out = []
    for i, (m, t) in enumerate(points):
        dominated = any((m2 >= m and t2 <= t) and (m2 > m or t2 < t) for j, (m2, t2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def _reference(row: BenchRow, rows: list[BenchRow]) -> tuple[BenchRow | None, bool]:
    """Torch FP32 on the same device, else onnxruntime/OpenVINO FP32 there, else the same elsewhere."""
    if row.miou is None:
        return None, False
    here = device_label(row.device)
    candidates = [r for r in rows if is_fp32_reference(r) and r.output_stride == row.output_stride and data_key(r) == data_key(row)]
    for same in (True, False):
        for runtimes in (("torch",), ("onnxruntime", "openvino")):
            for r in candidates:
                if r.runtime in runtimes and (device_label(r.device) == here) == same:
                    return r, same
    return None, False


def analyse(rows: list[BenchRow]) -> list[Entry]:
    """Entries for every row, in input order, with references and Pareto marks."""
    entries = []
    for row in rows:
        ref, same = _reference(row, rows)
        delta = None if ref is None or row.miou is None or ref.miou is None else row.miou - ref.miou
        speed = ref.latency["p50"] / row.latency["p50"] if ref is not None and same and row.latency["p50"] > 0 else None
        entries.append(Entry(row, device_label(row.device), data_key(row), ref, same, delta, speed, False))
    for group in group_by(entries, lambda e: (e.device, e.data)).values():
        scored = [e for e in group if e.row.miou is not None]
        for e, on in zip(scored, pareto_front([(e.row.miou, e.row.latency["p50"]) for e in scored])):  # type: ignore[misc]
            e.pareto = on
    return entries


def group_by(entries: list[Entry], key: Any) -> dict[Any, list[Entry]]:
    """Entries grouped by key(entry), groups and members in first-seen order."""
    out: dict[Any, list[Entry]] = {}
    for e in entries:
        out.setdefault(key(e), []).append(e)
    return out


def ratio_text(speedup: float) -> str:
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def summary_lines(entries: list[Entry]) -> dict[str, list[str]]:
    """Per device: one line per row that has a reference, e.g.
    'OS16 INT8 (qat) OpenVINO: 4.8x faster than FP32 torch for -0.2 mIoU'."""
    out: dict[str, list[str]] = {}
    for device, group in group_by(entries, lambda e: e.device).items():
        lines = []
        for e in sorted(group, key=lambda e: (e.row.output_stride or 0, e.row.latency["p50"])):
            if e.reference is None or e.reference is e.row or e.delta_miou is None:
                continue
            ref_name = row_label(e.reference)
            if e.speedup is not None:
                lines.append(f"OS{e.row.output_stride} {e.label}: {ratio_text(e.speedup)} than {ref_name} for {e.delta_miou:+.2f} mIoU")
            else:
                lines.append(
                    f"OS{e.row.output_stride} {e.label}: {e.delta_miou:+.2f} mIoU vs {ref_name} on {device_label(e.reference.device)} (no FP32 row on this device for a speed ratio)"
                )
        if not lines:
            lines.append("no FP32 reference row with mIoU to compare with")
        out[device] = lines
    return out
