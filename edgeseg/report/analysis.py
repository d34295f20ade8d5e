"""What the report says about a set of rows: FP32 references, mIoU deltas, speed-ups, Pareto fronts.

Rows are grouped by device (its label: CPU or GPU, and OS) and by the data they were scored on;
latency compares only within a device, mIoU only on the same data and output stride.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeseg import metrics
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
    pareto: bool  # on the front of its (device, data, output stride)
    runtime_speedup: float | None = None  # the same runtime's FP32 p50 / row p50 (same device, stride)
    runtime_reference: BenchRow | None = None  # that FP32 row
    worst_class: tuple[str, float] | None = None  # the class losing most IoU against the reference

    @property
    def end_to_end_ms(self) -> float | None:
        """Pre-processing + model p50 + post-processing, per call (None when pre/post are unknown)."""
        r = self.row
        if r.preprocess_ms is None or r.postprocess_ms is None:
            return None
        return r.latency["p50"] + (r.preprocess_ms + r.postprocess_ms) * r.batch

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
    if row.quant_method and (row.precision in ("int8", "fakequant") or row.quant_method.endswith(" weights")):
        prec += f" ({row.quant_method})"
    hint = row.precision_hint
    if hint and row.precision in _NATIVE_HINT and hint != _NATIVE_HINT[row.precision]:
        prec += f" ({hint} exec)"
    if row.perf_hint == "throughput":
        prec += " (throughput mode)"
    if row.float_convs:
        prec += f" ({row.float_convs} float convs)"
    if row.verified is False:
        prec += " (NOT VERIFIED)"
    return prec


def data_key(row: BenchRow) -> str:
    if not row.data or row.miou is None:
        return "-"
    return f"{row.data.get('format')}/{row.data.get('split')}"


def is_fp32_reference(row: BenchRow) -> bool:
    """FP32 executed in FP32 (an FP32 OpenVINO artifact run in bf16 is not a reference)."""
    return row.precision == "fp32" and row.precision_hint in (None, "f32") and row.miou is not None and not row.quant_method


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


def _runtime_reference(row: BenchRow, rows: list[BenchRow]) -> BenchRow | None:
    """The FP32 row of the same runtime, device, output stride and input shape (what a user runs otherwise)."""
    here = device_label(row.device)
    for r in rows:
        if (
            r.precision == "fp32"
            and r.precision_hint in (None, "f32")
            and not r.quant_method
            and r.runtime == row.runtime
            and r.output_stride == row.output_stride
            and r.input_shape == row.input_shape
            and device_label(r.device) == here
        ):
            return r
    return None


def worst_class(row: BenchRow, ref: BenchRow | None) -> tuple[str, float] | None:
    """(class, Δ IoU) of the class losing most IoU against the reference (None without per-class IoU)."""
    if ref is None or ref is row:
        return None
    return metrics.worst_class(row.per_class_iou, ref.per_class_iou)


CLASS_LOSS_CALLOUT = 1.0  # IoU points: an INT8 row losing more than this on a class is called out


def class_losses(entries: list[Entry], limit: float = CLASS_LOSS_CALLOUT) -> list[str]:
    """One line per INT8 row with classes losing more than `limit` IoU against its FP32 reference
    (mIoU averages classes, so a thin class can lose several points while mIoU barely moves)."""
    lines = []
    for e in entries:
        r, ref = e.row, e.reference
        if r.precision != "int8" or ref is None or ref is r or not r.per_class_iou or not ref.per_class_iou:
            continue
        losses = sorted(
            (v - ref.per_class_iou[n], n)
            for n, v in r.per_class_iou.items()
            if v is not None and ref.per_class_iou.get(n) is not None and v - ref.per_class_iou[n] < -limit
        )
        if losses:
            shown = ", ".join(f"{n} {d:+.2f}" for d, n in losses)
            lines.append(f"OS{r.output_stride} {e.label} on {e.device} ({e.row.target}): {shown} IoU vs {row_label(ref)}")
    return lines


def analyse(rows: list[BenchRow]) -> list[Entry]:
    """Entries for every row, in input order, with references and Pareto marks."""
    entries = []
    for row in rows:
        ref, same = _reference(row, rows)
        delta = None if ref is None or row.miou is None or ref.miou is None else row.miou - ref.miou
        speed = ref.latency["p50"] / row.latency["p50"] if ref is not None and same and row.latency["p50"] > 0 else None
        entry = Entry(row, device_label(row.device), data_key(row), ref, same, delta, speed, False)
        own = _runtime_reference(row, rows)
        if own is not None and row.latency["p50"] > 0:
            entry.runtime_speedup = own.latency["p50"] / row.latency["p50"]
            entry.runtime_reference = own
        entry.worst_class = worst_class(row, ref)
        entries.append(entry)
    # A front per output stride: a stride is chosen first (it sets the mask's detail), then a row.
    for group in group_by(entries, lambda e: (e.device, e.data, e.row.output_stride)).values():
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


def _is_float_weights(row: BenchRow) -> bool:
    """A quantized checkpoint run in float (bench --float-weights): a reference, not a deployment."""
    return bool(row.quant_method and row.quant_method.endswith(" weights"))


def ratio_text(speedup: float) -> str:
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def summary_lines(entries: list[Entry]) -> dict[str, list[str]]:
    """Per device: one line per row that has a reference, e.g.
    'OS16 INT8 (qat) OpenVINO: 4.8x faster than FP32 torch for -0.2 mIoU'."""
    out: dict[str, list[str]] = {}
    for device, group in group_by(entries, lambda e: e.device).items():
        lines = []
        float_qat = {(e.row.output_stride, e.data): e for e in group if _is_float_weights(e.row) and e.row.miou is not None}
        for e in sorted(group, key=lambda e: (e.row.output_stride or 0, e.row.latency["p50"])):
            if e.reference is None or e.reference is e.row or e.delta_miou is None:
                continue
            ref_name = row_label(e.reference)
            if _is_float_weights(e.row):
                lines.append(
                    f"OS{e.row.output_stride} {e.label}: {e.delta_miou:+.2f} mIoU vs {ref_name}: what fine-tuning did, without INT8"
                )
            elif e.speedup is not None:
                line = f"OS{e.row.output_stride} {e.label}: {ratio_text(e.speedup)} than {ref_name} for {e.delta_miou:+.2f} mIoU"
                base = float_qat.get((e.row.output_stride, e.data))
                if (
                    base is not None
                    and e.row.quant_method == "qat"
                    and base.delta_miou is not None
                    and base.row.miou is not None
                    and e.row.miou is not None
                ):
                    split = f"QAT weights in float {base.delta_miou:+.2f}, INT8 on them {e.row.miou - base.row.miou:+.2f}"
                    line += f" ({split})"
                lines.append(line)
            else:
                lines.append(
                    f"OS{e.row.output_stride} {e.label}: {e.delta_miou:+.2f} mIoU vs {ref_name} on {device_label(e.reference.device)} (no FP32 row on this device for a speed ratio)"
                )
        if not lines:
            lines.append("no FP32 reference row with mIoU to compare with")
        out[device] = lines
    return out
