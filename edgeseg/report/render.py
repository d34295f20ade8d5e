"""One document model rendered twice (Markdown and HTML), and the flat CSV of every row."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field

from edgeseg.report.analysis import Entry

# Blocks: ("h1"|"h2"|"h3"|"p", text), ("ul", [items]), ("table", Table), ("img", (path, alt)).
Block = tuple[str, object]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


def markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {body}\n")
        elif kind == "p":
            out.append(f"{body}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in body) + "\n")  # type: ignore[attr-defined]
        elif kind == "table":
            assert isinstance(body, Table)
            out.append("| " + " | ".join(body.header) + " |")
            out.append("|" + "|".join("---" for _ in body.header) + "|")
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body.rows]
            out.append("")
        elif kind == "img":
            path, alt = body  # type: ignore[misc]
            out.append(f"![{alt}]({path})\n")
    return "\n".join(out)


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;font-size:13px;margin-bottom:1em}"
    "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
    "td:nth-child(-n+5){text-align:left}img{max-width:100%}"
)


def html_page(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_STYLE}</style></head><body>"]
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            out.append(f"<{kind}>{e(str(body))}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in body) + "</ul>")  # type: ignore[attr-defined]
        elif kind == "table":
            assert isinstance(body, Table)
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in body.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body.rows]
            out.append("</table>")
        elif kind == "img":
            path, alt = body  # type: ignore[misc]
            out.append(f"<p><img src='{e(path)}' alt='{e(alt)}'></p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


CSV_COLUMNS = [
    "row_id",
    "timestamp",
    "device",
    "os",
    "cpu",
    "gpu",
    "l4t",
    "jetpack",
    "tensorrt",
    "runtime",
    "runtime_version",
    "provider",
    "target",
    "precision",
    "precision_hint",
    "quant_method",
    "threads",
    "batch",
    "output_stride",
    "input_shape",
    "runs",
    "warmup",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "throughput_fps",
    "first_inference_s",
    "peak_mem_mb",
    "preprocess_ms",
    "postprocess_ms",
    "miou",
    "pixel_acc",
    "delta_miou",
    "reference_row_id",
    "speedup_vs_reference",
    "pareto",
    "num_images",
    "data",
    "model_size_mb",
    "artifact",
    "artifact_sha256",
    "edgeseg_version",
    "notes",
]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def results_csv(entries: list[Entry]) -> str:
    """One line per measurement; per-class IoU as iou_<class> columns (union of all classes)."""
    classes = list(dict.fromkeys(n for e in entries for n in (e.row.per_class_iou or {})))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + [f"iou_{n}" for n in classes])
    for e in entries:
        r, d, lat = e.row, e.row.device, e.row.latency
        values = [
            r.row_id,
            r.timestamp,
            e.device,
            d.get("os"),
            d.get("cpu"),
            d.get("gpu"),
            d.get("l4t"),
            d.get("jetpack"),
            d.get("tensorrt"),
            r.runtime,
            r.runtime_version,
            r.provider,
            r.target,
            r.precision,
            r.precision_hint,
            r.quant_method,
            r.threads,
            r.batch,
            r.output_stride,
            "x".join(map(str, r.input_shape)),
            r.runs,
            r.warmup,
            lat.get("p50"),
            lat.get("p90"),
            lat.get("p99"),
            lat.get("mean"),
            lat.get("std"),
            lat.get("min"),
            lat.get("max"),
            r.throughput,
            r.first_inference_s,
            r.peak_mem_mb,
            r.preprocess_ms,
            r.postprocess_ms,
            r.miou,
            r.pixel_acc,
            e.delta_miou,
            e.reference.row_id if e.reference else None,
            e.speedup,
            e.pareto,
            r.num_images,
            e.data,
            r.model_size_mb,
            r.artifact,
            r.artifact_sha256,
            r.edgeseg_version,
            r.notes,
        ]
        iou = r.per_class_iou or {}
        writer.writerow([_cell(v) for v in values] + [_cell(iou.get(n)) for n in classes])
    return buf.getvalue()
