"""Report: reads bench result files only and writes report.md, report.html, results.csv/json and plots.

Rows from several devices and days merge (exact duplicates once, by row id). The report has a
Pick section (the most accurate row under each latency budget, per device, and the fastest row
near each output stride's best), a table per output stride with the Pareto front of each device
at that stride marked, a summary line per row against its FP32 reference, rows for artifacts not
measured yet, and PNG plots: mIoU vs p50 latency per device and output stride plus an overview,
per-class IoU of FP32 vs INT8 per output stride, and the latency distribution of every row.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from edgeseg.bench.results import SCHEMA_VERSION, BenchRow, ResultsError, load_results, merge_rows
from edgeseg.fsutil import check_writable, write_bytes, write_json, write_text
from edgeseg.metrics import class_delta_text, worst_class
from edgeseg.report import plots
from edgeseg.report.analysis import (
    CLASS_LOSS_CALLOUT,
    Entry,
    analyse,
    class_losses,
    group_by,
    is_fp32_reference,
    precision_label,
    summary_lines,
)
from edgeseg.report.pending import pending_lines
from edgeseg.report.pick import DEFAULT_BUDGETS_MS, budget_lines, check_budgets, resolve_device, stride_lines
from edgeseg.report.render import Block, Table, html_page, markdown, results_csv

log = logging.getLogger(__name__)

TABLE_HEADER = [
    "Pareto",
    "target",
    "precision",
    "runtime",
    "device",
    "mIoU",
    "Δ mIoU",
    "worst class Δ",
    "p50 ms",
    "spread ms",
    "p90 ms",
    "p99 ms",
    "end-to-end ms",
    "vs own FP32",
    "vs torch",
    "FPS",
    "load s",
    "first s",
    "peak RSS MB",
    "size MB",
    "measured",
]
INTRO = (
    "mIoU and pixel figures are percentages; p50/p90/p99 are one call of the model alone (batch as measured); "
    "spread is the range of the p50s of the rounds when rows were benched interleaved; end-to-end adds pre-processing "
    "(image -> input) and post-processing (logits -> class map) to the p50. "
    "Δ mIoU is against the FP32 reference of the same output stride and data: torch FP32 on the same device, "
    "else onnxruntime/OpenVINO FP32 there (* marks a reference measured on another device); worst class Δ is the "
    "class losing the most IoU against it. 'vs own FP32' is the speed-up over the same runtime's FP32 row, "
    "'vs torch' over torch FP32 eager on the device. load is the artifact's load (compile, engine build); first "
    "adds the first inference; peak RSS is the process's resident-memory peak. "
    "★ marks the Pareto front (highest mIoU, lowest p50) of each device at this output stride."
)


def build_report(
    results: list[Path],
    out: Path,
    *,
    budgets: list[float] | None = None,
    device: str | None = None,
    artifacts: list[Path] | None = None,
    sensitivity: list[Path] | None = None,
) -> dict[str, Path]:
    """Merge result files and write the report into `out`.

    Args:
        results: result files written by `edgeseg bench --json` (schema SCHEMA_VERSION).
        out: output folder (created).
        budgets: latency budgets (ms) of the Pick section (default DEFAULT_BUDGETS_MS).
        device: limit the Pick section to this device (its label or a unique part of it).
        artifacts: artifact folders expected in the report; those without a row get a
            "not measured here" line with the command that measures them.
        sensitivity: files of `edgeseg sensitivity --json` (one per output stride): a section
            with each one's top layers, its curve and a plot.

    Returns:
        Name -> path of every file written.
    """
    budgets = check_budgets(list(budgets) if budgets else list(DEFAULT_BUDGETS_MS))
    rows = merge_rows(*(load_results(p) for p in results))
    if not rows:
        raise ResultsError(f"no result rows in {', '.join(map(str, results))}; run 'edgeseg bench ... --json FILE' first")
    from edgeseg.train.sensitivity import read_sensitivity

    measured = [(p, read_sensitivity(p)) for p in sensitivity or []]  # a bad file fails before any writing
    out = check_writable(out)
    entries = analyse(rows)
    device = resolve_device(device, entries) if device else None
    blocks, images = _document(entries, results, _pick(entries, budgets, device) + pending_lines(rows, artifacts or []))
    blocks += _sensitivity(measured, images)
    written: dict[str, Path] = {}
    for name, png in images.items():
        write_bytes(out / name, png)
        written[name] = out / name
    files = {
        "report.md": markdown(blocks),
        "report.html": html_page(blocks, "edgeseg report"),
        "results.csv": results_csv(entries),
    }
    for name, text in files.items():
        write_text(out / name, text)
        written[name] = out / name
    write_json(out / "results.json", {"schema_version": SCHEMA_VERSION, "rows": [r.to_dict() for r in rows]})
    written["results.json"] = out / "results.json"
    log.info("report of %d rows written to %s", len(rows), out)
    return written


def _sensitivity(measured: list[tuple[Path, Any]], images: dict[str, bytes]) -> list[Block]:
    """Per sensitivity file (by output stride): its five most sensitive layers, the curve and a plot."""
    if not measured:
        return []
    blocks: list[Block] = [
        ("h2", "INT8 sensitivity per output stride"),
        ("p", "Each layer kept float alone while the rest stays INT8 (mIoU recovered), then the k best kept float together (measured)."),
    ]
    for path, r in sorted(measured, key=lambda pr: (pr[1].output_stride or 0, str(pr[0]))):
        stride = f"OS{r.output_stride}" if r.output_stride else "checkpoint's output stride"
        blocks.append(("h3", f"{stride}: {path.name}"))
        top = [f"{s.name} {s.gain:+.2f}" for s in r.layers[:5]]
        curve = ", ".join(f"k={p['k']} {p['miou']:.2f}{_worst(p.get('per_class_iou'), r.float_per_class)}" for p in r.cumulative)
        blocks.append(
            (
                "ul",
                [
                    f"{r.images} images: FP32 {r.float_miou:.2f}, full INT8 {r.int8_miou:.2f} ({r.int8_miou - r.float_miou:+.2f})"
                    f"{_worst(r.int8_per_class, r.float_per_class)}; "
                    f"{len(r.layers)} layers in {r.seconds:.0f} s"
                    + (f"; layers ranked on {r.ranking['images']} images" if r.ranking else ""),
                    "most sensitive (mIoU recovered alone): " + "; ".join(top),
                    "curve (k layers float together; in brackets the class losing most IoU against FP32): " + (curve or "not measured"),
                ],
            )
        )
        name = f"sensitivity_{_slug(f'{stride} {path}')}.png"
        images[name] = plots.sensitivity(r, f"INT8 sensitivity, {stride} ({path.name})")
        blocks.append(("img", (name, f"INT8 sensitivity at {stride}")))
    return blocks


def _worst(per_class: dict[str, float | None] | None, reference: dict[str, float | None]) -> str:
    """' (Fence -0.95)': the class losing most IoU against FP32, or '' where per-class IoU was not recorded."""
    text = class_delta_text(worst_class(per_class, reference))
    return f" ({text})" if text else ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] + "_" + hashlib.sha1(text.encode()).hexdigest()[:6]


def _fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _pick(entries: list[Entry], budgets: list[float], device: str | None) -> list[Block]:
    blocks: list[Block] = [
        ("h2", "Pick"),
        ("p", "The most accurate row under each latency budget (end-to-end p50: pre-processing + model + post-processing)."),
    ]
    for dev, lines in budget_lines(entries, budgets, device).items():
        blocks += [("h3", dev), ("ul", lines)]
    blocks.append(("p", "Per output stride, the fastest row within 0.5 mIoU of the stride's best:"))
    for dev, lines in stride_lines([e for e in entries if device is None or e.device == device]).items():
        blocks += [("h3", dev), ("ul", lines)]
    return blocks


def _speedup(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table_row(e: Entry) -> list[str]:
    r = e.row
    delta = _fmt(e.delta_miou, sign=True) + ("" if e.delta_miou is None or e.same_device_reference else "*")
    data = f", {r.num_images} {e.data} images" if r.miou is not None else ", no accuracy"
    threads = "default threads" if not r.threads else f"{r.threads} thread{'s' if r.threads > 1 else ''}"
    measured = f"{r.provider}, {threads}, batch {r.batch}, {r.runs} runs after {r.warmup} warm-up{data}"
    worst = class_delta_text(e.worst_class) or "-"
    spread = "-" if not r.round_p50_ms else f"{min(r.round_p50_ms):.2f}–{max(r.round_p50_ms):.2f}"
    return [
        "★" if e.pareto else "",
        r.target,
        precision_label(r),
        f"{r.runtime} {r.runtime_version or ''}".strip(),
        e.device,
        _fmt(r.miou),
        delta,
        worst,
        _fmt(r.latency["p50"]),
        spread,
        _fmt(r.latency["p90"]),
        _fmt(r.latency.get("p99")),
        _fmt(e.end_to_end_ms),
        _speedup(e.runtime_speedup) if e.row.precision != "fp32" else "-",
        _speedup(e.speedup) if e.reference is not None and e.reference.runtime == "torch" and e.reference is not r else "-",
        _fmt(r.throughput, 1),
        _fmt(r.load_s),
        _fmt(r.first_inference_s),
        _fmt(r.peak_rss_mb, 0),
        _fmt(r.model_size_mb),
        measured,
    ]


def _document(entries: list[Entry], sources: list[Path], front: list[Block]) -> tuple[list[Block], dict[str, bytes]]:
    """The report's blocks and plots; `front` (the Pick and not-measured sections) comes before the summary."""
    devices = group_by(entries, lambda e: e.device)
    blocks: list[Block] = [
        ("h1", "edgeseg report"),
        ("p", f"{len(entries)} measurements on {len(devices)} device(s) from {', '.join(str(s) for s in sources)}."),
        ("p", INTRO),
        *front,
        ("h2", "Summary"),
    ]
    for device, lines in summary_lines(entries).items():
        blocks += [("h3", device), ("ul", lines)]
    losses = class_losses(entries)
    if losses:
        blocks += [("h3", f"Classes an INT8 row loses more than {CLASS_LOSS_CALLOUT:g} IoU on"), ("ul", losses)]
    strides = group_by(sorted(entries, key=lambda e: (e.device, e.row.latency["p50"])), lambda e: e.row.output_stride)
    for stride in sorted(strides, key=lambda s: s or 0):
        blocks += [("h2", f"Output stride {stride}"), ("table", Table(TABLE_HEADER, [_table_row(e) for e in strides[stride]]))]
    images: dict[str, bytes] = {}
    blocks.append(("h2", "Plots"))
    blocks.append(("h3", "mIoU vs p50 latency (per device and data set: every output stride, then one plot per stride)"))
    for (device, data), group in group_by([e for e in entries if e.row.miou is not None], lambda e: (e.device, e.data)).items():
        name = f"miou_vs_latency_{_slug(f'{device} {data}')}.png"
        images[name] = plots.miou_vs_latency(group, f"{device}\n{data}, every output stride")
        blocks.append(("img", (name, f"mIoU vs p50 latency on {device}, {data}, every output stride")))
        for stride, rows in sorted(group_by(group, lambda e: e.row.output_stride).items(), key=lambda kv: kv[0] or 0):
            name = f"miou_vs_latency_os{stride}_{_slug(f'{device} {data}')}.png"
            images[name] = plots.miou_vs_latency(rows, f"{device}\n{data}, OS{stride}")
            blocks.append(("img", (name, f"mIoU vs p50 latency on {device}, {data}, OS{stride}")))
    blocks.append(("h3", "Per-class IoU, FP32 vs INT8"))
    for stride in sorted(strides, key=lambda s: s or 0):
        blocks += _per_class(strides[stride], stride, images)
    blocks.append(("h3", "Latency distribution (per device)"))
    for device, group in devices.items():
        if not any(e.row.latency_samples_ms for e in group):
            blocks.append(("p", f"{device}: no latency samples in the rows."))
            continue
        name = f"latency_{_slug(device)}.png"
        images[name] = plots.latency_distribution(group, device)
        blocks.append(("img", (name, f"latency distribution on {device}")))
    noted = group_by([e for e in entries if e.row.notes], lambda e: e.row.notes)
    if noted:
        notes = [f"{note} ({len(g)} row(s) on {', '.join(dict.fromkeys(e.device for e in g))})" for note, g in noted.items()]
        blocks += [("h2", "Notes"), ("ul", notes)]
    blocks.append(("p", "Every row, with per-class IoU: results.csv and results.json (schema 1, mergeable)."))
    return blocks, images


def _per_class(group: list[Entry], stride: int | None, images: dict[str, bytes]) -> list[Block]:
    """Per data set at this stride: the FP32 reference (torch first) next to up to 5 INT8 rows."""
    blocks: list[Block] = []
    for data, rows in group_by([e for e in group if e.row.per_class_iou], lambda e: e.data).items():
        refs = sorted((e for e in rows if is_fp32_reference(e.row)), key=lambda e: e.row.runtime != "torch")
        seen: dict[tuple[str, str], Entry] = {}
        for e in rows:
            if e.row.precision in ("int8", "fakequant"):
                seen.setdefault((e.row.target, e.label), e)
        if not refs or not seen:
            blocks.append(("p", f"OS{stride} {data}: no {'FP32' if not refs else 'INT8'} row with per-class IoU to compare."))
            continue
        name = f"per_class_iou_os{stride}_{re.sub(r'[^a-z0-9]+', '_', data.lower())}.png"
        images[name] = plots.per_class_iou(refs[0], list(seen.values())[:5], f"per-class IoU at OS{stride} ({data})")
        blocks.append(("img", (name, f"per-class IoU at OS{stride} on {data}, FP32 vs INT8")))
    return blocks or [("p", f"OS{stride}: no row with per-class IoU.")]


__all__ = ["BenchRow", "build_report"]
