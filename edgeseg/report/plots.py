"""PNG plots of a report (matplotlib, Agg backend, imported here only).

Each function returns the PNG bytes, so the caller writes them atomically.
"""

from __future__ import annotations

import io
from typing import Any

from edgeseg.report.analysis import Entry, row_label

_MARKERS = {8: "o", 16: "s", 32: "^"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _log_x(ax: Any) -> None:
    """Log x axis with plain numbers (1, 2, 5, 10, 20, ...) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def _colours(labels: list[str]) -> dict[str, Any]:
    cmap = _plt().get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def miou_vs_latency(entries: list[Entry], title: str) -> bytes:
    """mIoU against p50 latency for one device: colour per target/precision, marker per output
    stride, each output stride's Pareto front as a step line."""
    plt = _plt()
    scored = [e for e in entries if e.row.miou is not None]
    labels = list(dict.fromkeys(e.label for e in scored))
    colours = _colours(labels)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for e in scored:
        ax.scatter(
            e.row.latency["p50"],
            e.row.miou,
            color=colours[e.label],
            marker=_MARKERS.get(e.row.output_stride or 0, "D"),
            s=70,
            edgecolors="black" if e.pareto else "none",
            linewidths=1.2,
            zorder=3,
        )
    strides = sorted({e.row.output_stride or 0 for e in scored})
    styles = dict(zip(strides, ("--", ":", "-.", "-")))
    front = [e for e in scored if e.pareto]
    for stride in strides:
        points = sorted((e.row.latency["p50"], e.row.miou) for e in front if (e.row.output_stride or 0) == stride)
        if points:
            xs, ys = zip(*points)
            ax.step(xs, ys, where="post", color="black", linestyle=styles[stride], linewidth=1, zorder=2)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[k], label=k) for k in labels]
    handles += [
        plt.Line2D([], [], marker=m, linestyle="", color="grey", label=f"OS{s}")
        for s, m in _MARKERS.items()
        if any(e.row.output_stride == s for e in scored)
    ]
    handles += [
        plt.Line2D([], [], color="black", linestyle=styles[s], label=f"OS{s} Pareto front (outlined)")
        for s in strides
        if any((e.row.output_stride or 0) == s for e in front)
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")
    _log_x(ax)
    ax.set_xlabel("p50 latency (ms, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def per_class_iou(reference: Entry, others: list[Entry], title: str) -> bytes:
    """Grouped bars of per-class IoU: the FP32 reference next to each INT8 row."""
    plt = _plt()
    import numpy as np

    names = list(reference.row.per_class_iou or {})
    series = [reference, *others]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    for k, e in enumerate(series):
        iou = e.row.per_class_iou or {}
        values = [iou.get(n) if iou.get(n) is not None else 0.0 for n in names]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=f"{e.label} ({e.row.target}, mIoU {e.row.miou:.1f})")
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def latency_distribution(entries: list[Entry], title: str) -> bytes:
    """One box (whiskers at p1/p99, every sample as a dot) per row of one device."""
    plt = _plt()
    rows = sorted((e for e in entries if e.row.latency_samples_ms), key=lambda e: (e.row.output_stride or 0, e.row.latency["p50"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.5))
    data = [e.row.latency_samples_ms for e in rows]
    ax.boxplot(data, vert=False, whis=(1, 99), showfliers=False, widths=0.6)
    for i, samples in enumerate(data, start=1):
        ax.scatter(samples, [i] * len(samples), s=4, alpha=0.35, color="tab:blue", zorder=3)
    ax.set_yticks(range(1, len(rows) + 1), [f"OS{e.row.output_stride} {row_label(e.row)}" for e in rows], fontsize=7)
    ax.invert_yaxis()
    low, high = min(min(d) for d in data), max(max(d) for d in data)
    if low > 0 and high / low > 10:
        _log_x(ax)
    ax.set_xlabel("latency per call (ms)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def sensitivity(result: Any, title: str, top: int = 15) -> bytes:
    """An `edgeseg sensitivity` result: mIoU recovered by each of the `top` layers kept float alone
    (bars), and the measured curve of 1..k layers kept float together against FP32 and full INT8."""
    plt = _plt()
    layers = result.layers[:top]
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.28 * len(layers) + 1.5)), gridspec_kw={"width_ratios": [3, 2]})
    y = list(range(len(layers)))[::-1]
    bars.barh(y, [s.gain for s in layers], color=["#c44e52" if s.gain > 0 else "#8c8c8c" for s in layers])
    bars.set_yticks(y, [s.name for s in layers], fontsize=7)
    bars.axvline(0, color="black", linewidth=0.6)
    bars.set_xlabel("mIoU recovered with the layer alone kept float (points)")
    bars.grid(True, axis="x", alpha=0.3)
    ks = [0, *(p["k"] for p in result.cumulative)]
    mious = [result.int8_miou, *(p["miou"] for p in result.cumulative)]
    curve.plot(ks, mious, marker="o", label="INT8, k layers kept float")
    curve.axhline(result.float_miou, color="#2ca02c", linestyle="--", label=f"FP32 {result.float_miou:.2f}")
    curve.axhline(result.int8_miou, color="#8c8c8c", linestyle=":", label=f"full INT8 {result.int8_miou:.2f}")
    curve.set_xlabel(
        "layers kept float (k)" + (f", ordered for <= {result.max_class_drop:g} IoU per class" if result.max_class_drop is not None else "")
    )
    curve.set_ylabel(f"mIoU (%) on {result.images} images")
    curve.grid(True, alpha=0.3)
    curve.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)
