"""One document model rendered twice (Markdown and HTML), and the flat CSV of every row."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from typing import cast

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
            path, alt = cast(tuple[str, str], body)
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
            path, alt = cast(tuple[str, str], body)
            out.append(f"<p><img src='{e(path)}' alt='{e(alt)}'></p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _csv_record(e: Entry) -> dict[str, object]:
    """The flat columns of one row (per-class IoU excluded)."""
    r, d = e.row, e.row.device
    rec: dict[str, object] = {"row_id": r.row_id, "timestamp": r.timestamp, "device": e.device}
    rec.update({k: d.get(k) for k in ("os", "cpu", "gpu", "l4t", "jetpack", "tensorrt")})
    for k in (
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
    ):
        rec[k] = getattr(r, k)
    rec.update(input_shape="x".join(map(str, r.input_shape)), runs=r.runs, warmup=r.warmup)
    rec.update({f"{k}_ms": r.latency.get(k) for k in ("p50", "p90", "p99", "mean", "std", "min", "max")})
    rec.update(end_to_end_ms=e.end_to_end_ms, spread_min_ms=min(r.round_p50_ms) if r.round_p50_ms else None)
    rec.update(spread_max_ms=max(r.round_p50_ms) if r.round_p50_ms else None)
    rec.update(throughput_fps=r.throughput, load_s=r.load_s, first_inference_s=r.first_inference_s, peak_mem_mb=r.peak_mem_mb)
    rec.update(peak_rss_mb=r.peak_rss_mb, speedup_vs_own_fp32=e.runtime_speedup)
    rec.update(worst_class=e.worst_class[0] if e.worst_class else None, worst_class_delta_iou=e.worst_class[1] if e.worst_class else None)
    rec.update(preprocess_ms=r.preprocess_ms, postprocess_ms=r.postprocess_ms, miou=r.miou, pixel_acc=r.pixel_acc, delta_miou=e.delta_miou)
    rec.update(reference_row_id=e.reference.row_id if e.reference else None, speedup_vs_reference=e.speedup, pareto=e.pareto)
    rec.update(num_images=r.num_images, data=e.data)
    for k in ("model_size_mb", "artifact", "artifact_sha256", "edgeseg_version", "notes"):
        rec[k] = getattr(r, k)
    return rec


def results_csv(entries: list[Entry]) -> str:
    """One line per measurement; per-class IoU as iou_<class> columns (union of all classes)."""
    classes = list(dict.fromkeys(n for e in entries for n in (e.row.per_class_iou or {})))
    records = [_csv_record(e) for e in entries]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(records[0]) + [f"iou_{n}" for n in classes])
    for e, rec in zip(entries, records):
        iou = e.row.per_class_iou or {}
        writer.writerow([_cell(v) for v in rec.values()] + [_cell(iou.get(n)) for n in classes])
    return buf.getvalue()
