"""What the CLI shows: the consoles, progress bars, tables and result lines of each command.

edgeseg.cli parses the command line and calls the library; everything it prints is shaped here,
so each command reads as parse -> call -> render. Nothing here decides anything: a renderer gets
results and prints them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:  # types only: the CLI imports the library lazily, inside each command
    from edgeseg.bench.results import BenchRow
    from edgeseg.export.artifacts import ExportResult
    from edgeseg.export.preflight import Violation

console = Console(stderr=True)  # progress, warnings and errors
out_console = Console()  # results


def progress() -> Progress:
    """The progress bar of a long step: description, bar, count, live info, elapsed and remaining."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def iou_table(title: str, summary: dict[str, Any]) -> Table:
    """Per-class IoU, mIoU and pixel accuracy of an evaluation summary."""
    table = Table(title=title)
    detail = "per_class_recall" in summary  # ConfusionMatrix.errors was asked for
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    if detail:
        for col in ("recall %", "precision %", "missed as (% of its pixels)", "false positives from (% of them)"):
            table.add_column(col, justify="right" if col.endswith("%") else "left")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def other(v: dict[str, Any] | None) -> str:
        return "-" if not v else f"{escape(v['class'])} {v['percent']:.1f}"

    for name, value in summary["per_class_iou"].items():
        row = [escape(name), fmt(value)]
        if detail:
            row += [fmt(summary["per_class_recall"].get(name)), fmt(summary["per_class_precision"].get(name))]
            row += [other(summary["missed_as"].get(name)), other(summary["false_positives_from"].get(name))]
        table.add_row(*row)
    table.add_row("[bold]mIoU", f"[bold]{summary['miou']:.2f}")
    table.add_row("pixel acc", f"{summary['pixel_acc']:.2f}")
    return table


def train_callback(bar: Progress) -> Callable[..., None]:
    """fit's progress events as one bar per stage (start/step) and a line per evaluation."""
    tasks: dict[str, Any] = {}

    def callback(event: str, **info: Any) -> None:
        stage = info.get("stage", "")
        if event == "start":
            tasks[stage] = bar.add_task(f"train {stage}", total=info["total"], completed=info["done"], info="")
        elif event == "step":
            bar.update(tasks[stage], completed=info["it"], info=f"loss {info['loss']:.3f} lr {info['lr']:.2e} {info['img_s']:.1f} img/s")
        elif event == "eval":
            console.print(f"{stage} step {info['it']}: val mIoU {info['miou']:.2f}")

    return callback


def print_train_results(results: dict[str, Any], run_dir: Path) -> None:
    for stage, res in results.items():
        out_console.print(f"{stage}: best val mIoU {res['best_miou']:.2f}")
    out_console.print(f"wrote {run_dir / 'best.pt'}")


def print_model_info(source: Path, rows: list[dict[str, Any]]) -> None:
    """Parameters and GMACs per head and output stride, one row each."""
    table = Table(title=f"{source}")
    for col in ("head", "OS", "input", "params (M)", "GMACs"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["head"], str(r["output_stride"]), r["input"], f"{r['params'] / 1e6:.3f}", f"{r['gmacs']:.3f}")
    out_console.print(table)


def print_calibration(summary: dict[str, Any]) -> None:
    """The calibrate command's lines, each whole (soft_wrap): a script or a test reads them by line."""
    if summary["too_few"]:
        console.print(
            f"[yellow]warning:[/yellow] calibrated on {summary['num_images']} images, fewer than the recommended 300; ranges may be noisy",
            soft_wrap=True,
        )
    out_console.print(
        f"{summary['method']} ranges of {summary['quantizers']} tensors from {summary['num_images']} images "
        f"({escape(str(summary['calib_list']))}) in {summary['seconds']:.1f}s",
        highlight=False,
        soft_wrap=True,
    )
    out_console.print(f"wrote {escape(str(summary['out']))} and {escape(str(summary['ranges']))}", highlight=False, soft_wrap=True)


def print_export_results(results: Iterable[ExportResult]) -> None:
    """One line per target: skipped (yellow), failed (red), or the folder written and its check."""
    from edgeseg.export.artifacts import describe

    for r in results:
        if r.skipped:
            console.print(f"[yellow]skipped {r.target}:[/yellow] {r.skipped}")
            continue
        if r.error:
            console.print(f"[red]failed {r.target}:[/red] {r.error}", highlight=False, soft_wrap=True)
            continue
        report = r.meta.get("export_report", {})
        check = report.get("max_abs_diff")
        detail = (
            f", onnxruntime vs torch max |diff| {check:.2e}, argmax agreement {report['argmax_agreement']:.4f}" if check is not None else ""
        )
        out_console.print(f"wrote {r.folder} ({r.size_bytes / 1e6:.1f} MB) in {r.seconds:.1f}s{detail}")
        if describe(r):
            out_console.print(f"  {describe(r)}", highlight=False, markup=False)
        io = r.meta.get("io") or {}
        if io.get("verification"):
            out_console.print(
                f"  takes {io['input']} ({io['layout']}), gives {io['output']}{' as ' + io['labels_dtype'] if io.get('labels_dtype') else ''}; "
                f"against its core: {io['verification']['agreement']:.4%} of pixels agree",
                highlight=False,
                markup=False,
            )
        if r.meta.get("verified") is False:
            for failure in r.meta.get("verification_failures", []):
                console.print(f"[red]NOT VERIFIED (kept by --force):[/red] {failure['error']}", highlight=False, soft_wrap=True)
        if r.meta.get("float_source") is not None:
            layers, convs = r.meta.get("float_layers", []), r.meta.get("float_convs", [])
            shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
            out_console.print(
                f"  kept float (read back from the graph): {len(layers)} layers, {len(convs)} convs{': ' + shown if layers else ''}",
                highlight=False,
                markup=False,
            )


def lazy_task(bar: Progress, description: str, info: str = "") -> Callable[[int, int], None]:
    """A progress(done, total) callback whose task appears on its first call (a step that may not run)."""
    task: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task:
            task.append(bar.add_task(description, total=total, info=info))
        bar.update(task[0], completed=done, total=total)

    return update


def bench_progress(bar: Progress) -> Callable[[Path], Any]:
    """bench_into's progress factory: one task per artifact, the bar started with the first one, so
    checks that fail first print only their line."""

    def progress_for(path: Path) -> Any:
        bar.start()
        task = bar.add_task(f"bench {path.name}", total=None, info="loading")
        return lambda stage, done, total: bar.update(task, completed=done, total=total, info=stage)

    return progress_for


def print_bench_rows(rows: list[BenchRow], json_out: Path) -> None:
    table = Table(title=f"bench -> {json_out}")
    for col in ("artifact", "runtime", "precision", "OS", "mIoU", "p50 ms", "p90 ms", "FPS", "first s", "peak MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        miou = "-" if r.miou is None else f"{r.miou:.2f}"
        mem = "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}"
        table.add_row(
            Path(r.artifact).name,
            r.runtime,
            f"{r.precision} {r.precision_hint or ''}".strip(),
            str(r.output_stride),
            miou,
            f"{r.latency['p50']:.2f}",
            f"{r.latency['p90']:.2f}",
            f"{r.throughput:.1f}",
            f"{r.first_inference_s:.2f}",
            mem,
        )
    out_console.print(table)
    out_console.print(f"wrote {len(rows)} rows to {json_out}")


def pipeline_event(started: float) -> Callable[[str, str], None]:
    """The pipeline's event lines: stage, seconds since `started` (a perf_counter), message."""

    def event(stage: str, message: str) -> None:
        # escape: messages quote files and preflight rules ("[opset] ...") that are not markup
        console.print(
            f"[bold cyan]{stage:>9}[/] [dim]{time.perf_counter() - started:6.0f}s[/] {escape(message)}", highlight=False, soft_wrap=True
        )

    return event


def print_violations(found: list[Violation], onnx_file: Path, trt_version: int, dla: int | None) -> int:
    """One coloured line per preflight finding and a count line; returns the number of errors."""
    for v in found:
        out_console.print(f"[{'red' if v.severity == 'error' else 'yellow'}]{escape(str(v))}[/]", highlight=False, soft_wrap=True)
    errors = sum(v.severity == "error" for v in found)
    out_console.print(
        f"{onnx_file}: {errors} errors, {len(found) - errors} warnings (TensorRT {trt_version}.x{f', DLA {dla}' if dla is not None else ''})",
        soft_wrap=True,
    )
    return errors


def sensitivity_table(result: Any, top: int) -> Table:
    """The `top` most sensitive layers and the cumulative curve of `edgeseg sensitivity`."""
    drop = result.float_miou - result.int8_miou
    stride = f" at OS{result.output_stride}" if result.output_stride else ""
    order = f"; curve ordered for <= {result.max_class_drop:g} IoU lost per class" if result.max_class_drop is not None else ""
    r = result.ranking
    if r is not None:  # the layers' mIoU/gain columns are on the ranking's images, the curve on result.images
        source = f" of {r['source']}" if r.get("source") else ""
        order += f"; layers ranked on {r['images']} images{source} (FP32 {r['float_miou']:.2f}, INT8 {r['int8_miou']:.2f})"
    table = Table(
        title=(
            f"INT8 sensitivity{stride} on {result.images} images: FP32 {result.float_miou:.2f} mIoU, INT8 {result.int8_miou:.2f} "
            f"({-drop:+.2f}, worst class {_worst_class(result.float_per_class, result.int8_per_class)}); "
            f"{len(result.layers)} layers in {result.seconds:.0f}s{order}"
        )
    )
    cols = ["rank", "layer kept float", "convs", "MACs", "mIoU", "gain", "keep 1..k float: mIoU", "worst class"]
    if result.max_class_drop is not None:
        cols.append("curve's k-th layer")
    for col in cols:
        wide = col in ("layer kept float", "curve's k-th layer")  # module paths are the answer: never cut them
        table.add_column(col, justify="left" if wide else "right", overflow="fold" if wide else "ellipsis", no_wrap=not wide)
    for i, layer in enumerate(result.layers[: max(top, 0)]):
        point = result.cumulative[i] if i < len(result.cumulative) else None
        share = f"{100 * layer.macs / result.macs:.1f}%" if layer.macs is not None and result.macs else "-"  # of the model's
        row = [str(i + 1), escape(layer.name), str(len(layer.convs)), share, f"{layer.miou:.2f}", f"{layer.gain:+.2f}"]
        row += ["-", "-"] if point is None else [f"{point['miou']:.2f}", _worst_class(result.float_per_class, point.get("per_class_iou"))]
        if result.max_class_drop is not None:
            row.append("-" if point is None else escape(point["layers"][-1]))
        table.add_row(*row)
    return table


def _worst_class(float_pc: dict[str, float | None], pc: dict[str, float | None] | None) -> str:
    """'Fence -1.52': the class that loses most IoU against float, or '-' when unknown."""
    from edgeseg.metrics import class_delta_text, worst_class

    text = class_delta_text(worst_class(pc, float_pc))
    return escape(text) if text else "-"
