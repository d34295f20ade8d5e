"""The Typer app: parse, call the library, render. No logic of its own."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgeseg import cli_render as render
from edgeseg.cli_render import console, out_console
from edgeseg.constants import OUTPUT_STRIDES
from edgeseg.errors import EdgesegError, Interrupted, Terminated
from edgeseg.export.base import TARGETS
from edgeseg.fsutil import spare_inputs

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Segmentation from training to a fast INT8 model on an edge device.")
STATE: dict[str, bool] = {"verbose": False, "terminated": False}


# Libraries whose own notices (version checks, tracer and deprecation warnings, progress bars)
# bury edgeseg's output; --verbose shows them.
QUIET_LOGGERS = ("coremltools", "nncf", "openvino", "torch", "onnxscript", "onnx_ir", "matplotlib", "PIL")


def _quiet_third_parties() -> None:
    """Hide third-party warnings and notices: edgeseg reports through logging, never `warnings`."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' progress bars
    os.environ.setdefault("TORCH_LOGS", "-all")  # torch's own log handler ("No CUDA runtime is found" on CPU machines)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks, debug logs and third-party warnings.")] = False,
) -> None:
    STATE["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        _quiet_third_parties()


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/smoke.yaml")],
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<recipe name>)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: section.key=value")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly from RUN/last.pt")] = False,
    qat: Annotated[bool | None, typer.Option("--qat/--no-qat", help="Force the QAT stage on or off")] = None,
    init: Annotated[Path | None, typer.Option("--init", help="Skip FP32: start QAT from this FP32 checkpoint")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="Data-parallel processes (torchrun)")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Train into a run folder that holds another recipe's run")] = False,
) -> None:
    """Train FP32, then QAT when the recipe (or --qat) asks for it."""
    from edgeseg.config import load_recipe

    r = load_recipe(recipe, set_)  # a bad recipe fails here, before torch is imported
    run_dir = out or Path("runs") / r.name
    from edgeseg.train import fit
    from edgeseg.train.launch import launch

    code = launch(recipe, run_dir, nproc_per_node=nproc_per_node, overrides=set_, resume=resume, qat=qat, init=init)
    if code is not None:  # torchrun ran the training in nproc_per_node processes
        raise typer.Exit(code)
    with render.progress() as bar:
        results = fit(r, run_dir, resume=resume, qat=qat, init=init, callback=render.train_callback(bar), force=force)
    render.print_train_results(results, run_dir)


@app.command("eval")
def eval_(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint (.pt)")],
    data: Annotated[str | None, typer.Option("--data", help="Data root (default: the recipe's)")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Data format (default: the recipe's)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split (default: the recipe's val split)")] = None,
    output_stride: Annotated[int | None, typer.Option("--output-stride", help="Evaluate at output stride 8/16/32")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON")] = None,
) -> None:
    """mIoU, pixel accuracy and per-class IoU of a checkpoint (PyTorch), with each class's recall, precision and main confusions."""
    from edgeseg.data.dataset import eval_dataset
    from edgeseg.fsutil import write_json
    from edgeseg.train.checkpoint import checkpoint_recipe, load_checkpoint, model_from_checkpoint
    from edgeseg.train.evaluate import evaluate

    spare_inputs({"--json": json_out}, [ckpt])
    c = load_checkpoint(ckpt)
    recipe = checkpoint_recipe(c)
    model = model_from_checkpoint(c, output_stride)
    ds = eval_dataset(recipe, split, data, fmt)
    with render.progress() as bar:
        task = bar.add_task("eval", total=len(ds), info="")
        summary = evaluate(model, ds, progress=lambda i, n: bar.update(task, completed=i), errors=True)
    summary["output_stride"] = output_stride or c["arch"]["output_stride"]
    summary["checkpoint"] = str(ckpt)
    out_console.print(render.iou_table(f"{ckpt} @ OS{summary['output_stride']}{_trained_to(c)}", summary))
    if json_out:
        write_json(json_out, summary)


def _trained_to(c: dict) -> str:
    """' · fp32 step 225' for a checkpoint written by training, so a half-trained one (fp32.pt is
    written at each evaluation while the run goes on) shows as such; '' when it does not say."""
    stage, step = c.get("stage"), c.get("iteration")
    if isinstance(stage, str) and stage in ("fp32", "qat") and isinstance(step, int) and not isinstance(step, bool) and step >= 0:
        return f" · {stage} step {step}"
    return ""


@app.command()
def sensitivity(
    ckpt: Annotated[Path, typer.Argument(help="INT8 checkpoint: qat.pt, or one written by 'edgeseg calibrate'")],
    data: Annotated[str | None, typer.Option("--data", help="Data root (default: the recipe's)")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Data format (default: the recipe's)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split (default: the recipe's val split)")] = None,
    images: Annotated[int, typer.Option("--images", help="Rank the layers on the first N images of the split")] = 24,
    curve_images: Annotated[
        int | None,
        typer.Option("--curve-images", help="Measure the curve (what --max-drop/--max-class-drop choose from) on the first M >= N images"),
    ] = None,
    ranking: Annotated[
        Path | None,
        typer.Option("--ranking", help="Reuse the layer ranking of this file (same checkpoint and stride); measure only the curve"),
    ] = None,
    cumulative: Annotated[int, typer.Option("--cumulative", help="Length of the curve: keep the 1..K most sensitive layers float")] = 10,
    output_stride: Annotated[
        int | None,
        typer.Option("--output-stride", help="Measure at output stride 8/16/32, the one you export at (default: the checkpoint's)"),
    ] = None,
    max_class_drop: Annotated[
        float | None,
        typer.Option("--max-class-drop", help="Order the curve for this per-class limit (IoU points), as export --max-class-drop uses it"),
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Layers shown in the table")] = 10,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every layer's scores and the curve as JSON")] = None,
) -> None:
    """Per-layer INT8 sensitivity: mIoU with each quantized layer alone kept float, ranked, and the curve."""
    from edgeseg.fsutil import write_json
    from edgeseg.train.sensitivity import checkpoint_sensitivity

    spare_inputs({"--json": json_out}, [ckpt, *([ranking] if ranking else [])])
    with render.progress() as bar:
        task = bar.add_task("sensitivity", total=None, info="layers")
        result = checkpoint_sensitivity(
            ckpt,
            data=data,
            fmt=fmt,
            split=split,
            images=images,
            cumulative=cumulative,
            output_stride=output_stride,
            max_class_drop=max_class_drop,
            curve_images=curve_images,
            ranking=ranking,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    out_console.print(render.sensitivity_table(result, top))
    if json_out:
        write_json(json_out, result.to_dict())


@app.command()
def predict(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint (.pt)")],
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    out: Annotated[Path, typer.Option("--out", help="Folder for masks and overlays")] = Path("predictions"),
    output_stride: Annotated[int | None, typer.Option("--output-stride")] = None,
) -> None:
    """Write a coloured mask PNG and an overlay per image."""
    from edgeseg.predict import predict_files

    spare_inputs({"--out": out}, [ckpt, *images])
    written = predict_files(ckpt, images, out, output_stride)
    out_console.print(f"wrote {len(written)} masks and overlays to {out}")


@app.command()
def info(
    source: Annotated[Path, typer.Argument(help="Recipe (.yaml) or checkpoint (.pt)")],
    input_size: Annotated[str | None, typer.Option("--input-size", help="HxW (default: the recipe's eval/crop size)")] = None,
) -> None:
    """Parameters and GMACs at each output stride."""
    from edgeseg.train.info import model_info

    render.print_model_info(source, model_info(source, input_size))


@app.command()
def calibrate(
    ckpt: Annotated[Path, typer.Argument(help="FP32 checkpoint (.pt)")],
    out: Annotated[Path, typer.Option("--out", help="Calibrated checkpoint to write (plus FILE.ranges.json)")],
    calib: Annotated[Path | None, typer.Option("--calib", help="Image list, one path a line (default: the recipe's)")] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Root of the list's paths (default: the recipe's data.root)")
    ] = None,
    method: Annotated[str | None, typer.Option("--method", help="max, percentile, entropy or mse (default: the recipe's)")] = None,
    percentile: Annotated[float | None, typer.Option("--percentile", help="For --method percentile (default 99.99)")] = None,
    num_images: Annotated[int | None, typer.Option("--num-images", help="Use the first N images of the list")] = None,
) -> None:
    """Post-training quantization: calibrate INT8 ranges into a checkpoint that exports to INT8."""
    from edgeseg.quant import ranges_path
    from edgeseg.train.ptq import calibrate_checkpoint

    spare_inputs({"--out": out, "--out (ranges)": ranges_path(out)}, [ckpt, *([calib] if calib else [])])
    with render.progress() as bar:
        task = bar.add_task("calibrate", total=None, info="")
        summary = calibrate_checkpoint(
            ckpt,
            calib,
            out,
            data_root=data_root,
            method=method,
            percentile=percentile,
            num_images=num_images,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    render.print_calibration(summary)


@app.command()
def export(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint (.pt): FP32, calibrated (PTQ) or QAT")],
    target: Annotated[str, typer.Option("--target", help=f"{', '.join(TARGETS)} or all")] = "onnx",
    precision: Annotated[
        str, typer.Option("--precision", help="fp32 or int8 (fp16 where the target has it; w8 on coreml: int8 weights, FP16 activations)")
    ] = "int8",
    output_stride: Annotated[int | None, typer.Option("--output-stride", help="Export at output stride 8/16/32")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", help="HxW (default: the recipe's export/eval size)")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder that receives <target>_<precision>_os<N>/")] = Path("export"),
    allow_fallback: Annotated[bool, typer.Option("--allow-fallback", help="OpenVINO INT8: accept layers that do not run in INT8")] = False,
    ptq: Annotated[str | None, typer.Option("--ptq", help="OpenVINO: 'nncf' quantizes the float model with NNCF instead")] = None,
    exact_grid: Annotated[
        bool,
        typer.Option("--exact-grid", help="OpenVINO INT8: keep the signed grid after ReLU bit for bit (default: u8, ~5% faster)"),
    ] = False,
    dla: Annotated[int | None, typer.Option("--dla", help="Jetson: DLA core (FP16/INT8, GPU fallback)")] = None,
    build_engine: Annotated[
        bool, typer.Option("--build-engine", help="Jetson: build the TensorRT engine now (needs tensorrt + GPU)")
    ] = False,
    trt_version: Annotated[
        int, typer.Option("--trt-version", help="Jetson: TensorRT major whose preflight errors stop the export (10 or 11)")
    ] = 10,
    float_regions: Annotated[
        str, typer.Option("--float-regions", help="Jetson INT8: precision of the layers outside Q/DQ, fp16 or fp32")
    ] = "fp16",
    keep_float: Annotated[
        int | None, typer.Option("--keep-float", help="INT8: keep the K layers 'edgeseg sensitivity' ranks first in float")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", help="INT8: keep the fewest layers float that bring it within D mIoU points of FP32")
    ] = None,
    max_class_drop: Annotated[
        float | None, typer.Option("--max-class-drop", help="With --max-drop: and no class more than C IoU points under FP32")
    ] = None,
    sensitivity_json: Annotated[
        Path | None,
        typer.Option("--sensitivity", help="With --keep-float/--max-drop: a ranking from 'edgeseg sensitivity --json' (default: measure)"),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Write the artifact even when a verification gate fails, marked verified: false in meta.json"),
    ] = False,
    model_input: Annotated[
        str | None,
        typer.Option(
            "--input", help="image: uint8 pixels, normalised in the model (default for openvino, jetson); tensor: normalised float32"
        ),
    ] = None,
    model_output: Annotated[
        str | None,
        typer.Option("--output", help="labels: the class map, argmax in the model (default for openvino, jetson); logits: float32"),
    ] = None,
) -> None:
    """Export a checkpoint to a target's artifact folder (model + meta.json), verified on export."""
    from edgeseg.export.artifacts import check_io, export_targets
    from edgeseg.export.base import ExportRequest
    from edgeseg.export.mixed import requested, resolve
    from edgeseg.export.tensorrt import check_float_regions
    from edgeseg.sizes import check_dla_core, parse_size

    check_dla_core(dla)
    check_float_regions(float_regions)

    request = ExportRequest(
        checkpoint=ckpt,
        precision=precision,
        output_stride=output_stride,
        input_size=parse_size(input_size) if input_size else None,
        dynamic_batch=dynamic_batch,
        out_dir=out,
        options={
            "allow_fallback": allow_fallback,
            "ptq": ptq,
            "exact_grid": exact_grid,
            "dla": dla,
            "build_engine": build_engine,
            "trt_version": trt_version,
            "float_regions": float_regions,
            "keep_float": keep_float,
            "max_drop": max_drop,
            "max_class_drop": max_class_drop,
            "sensitivity": sensitivity_json,
            "input": model_input,
            "output": model_output,
            "force": force,
        },  # fmt: skip
    )
    check_io(request, [target])
    if requested(request.options):  # choose the float layers once for every target (measuring them takes a while)
        with render.progress() as bar:
            resolve(request, progress=render.lazy_task(bar, "sensitivity", "layers"))
    with console.status(f"exporting {target} {precision}"):
        results = export_targets(request, [target])
    render.print_export_results(results)
    if any(r.error for r in results):
        raise typer.Exit(2)


@app.command()
def bench(
    artifacts: Annotated[
        list[Path], typer.Argument(help="Artifact folders (edgeseg export) and/or checkpoints (.pt: the torch FP32 baseline)")
    ],
    json_out: Annotated[Path, typer.Option("--json", help="Results file; rows are merged into it when it exists")],
    data: Annotated[str | None, typer.Option("--data", help="Data root (default: the artifact's meta.json)")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Data format (default: the artifact's)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to score (default: the artifact's, else val)")] = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up runs")] = 10,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads of the runtime (default: its own)")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per call")] = 1,
    no_accuracy: Annotated[bool, typer.Option("--no-accuracy", help="Latency only: skip mIoU")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="Score the first N images only")] = None,
    precision_hint: Annotated[str | None, typer.Option("--precision-hint", help="OpenVINO execution precision: f32, bf16, f16")] = None,
    output_stride: Annotated[int | None, typer.Option("--output-stride", help=".pt only: run at output stride 8/16/32")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", help=".pt only: HxW (default: the recipe's export size)")] = None,
    float_weights: Annotated[
        bool, typer.Option("--float-weights", help="Quantized .pt only: run its weights in float (what fine-tuning did, without INT8)")
    ] = False,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds", help="Time the artifacts interleaved in this many rounds (ratios hold on a busy machine; 1: one after another)"
        ),
    ] = 1,
    device: Annotated[str | None, typer.Option("--device", help="OpenVINO device: CPU, GPU, NPU or AUTO (default: CPU)")] = None,
    hint: Annotated[
        str | None,
        typer.Option("--hint", help="OpenVINO PERFORMANCE_HINT: latency (default) or throughput (FPS at full load, parallel requests)"),
    ] = None,
    compute_units: Annotated[
        str | None, typer.Option("--compute-units", help="Core ML engines: all (default), cpu_and_ne, cpu_and_gpu, cpu_only")
    ] = None,
) -> None:
    """Latency, memory and mIoU of artifacts, each with its own runtime; rows go to --json."""
    from edgeseg.bench import BenchOptions, bench_interleaved, bench_into
    from edgeseg.sizes import parse_size  # torch-free, like bench itself

    size = parse_size(input_size) if input_size else None
    spare_inputs({"--json": json_out}, artifacts)
    options = BenchOptions(
        runs=runs,
        warmup=warmup,
        threads=threads,
        batch=batch,
        accuracy=not no_accuracy,
        limit=limit,
        data_root=data,
        data_format=fmt,
        split=split,
        precision_hint=precision_hint,
        output_stride=output_stride,
        input_size=size,
        float_weights=float_weights,
        device=device,
        perf_hint=hint,
        compute_units=compute_units,
    )
    bar = render.progress()  # started with the first artifact: checks that fail first print only their line
    try:
        if rounds == 1:
            rows = bench_into(json_out, artifacts, options, render.bench_progress(bar))
        else:
            rows = bench_interleaved(json_out, artifacts, options, rounds, render.bench_progress(bar))
    finally:
        bar.stop()
    render.print_bench_rows(rows, json_out)


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(help="Results files written by 'edgeseg bench --json' (several devices and days merge)")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md/.html, results.csv/.json and plots")] = Path("report"),
    budget: Annotated[
        list[float] | None, typer.Option("--budget", help="Latency budget in ms for the Pick section (repeat it; default 20, 40, 80)")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="Pick only for this device (its label or a unique part of it)")] = None,
    artifacts: Annotated[
        list[Path] | None,
        typer.Option("--artifact", help="Artifact folder expected in the report; listed with its bench command when unmeasured"),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Results file to gate against: exit 1 when mIoU drops or a latency ratio grows")
    ] = None,
    sensitivity_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--sensitivity", help="A file of 'edgeseg sensitivity --json' (repeat it, one per output stride): ranking, curve, plot"
        ),
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="With --baseline: mIoU points a row may lose")] = 0.0,
    latency_tolerance: Annotated[
        float, typer.Option("--latency-tolerance", help="With --baseline: relative growth allowed of p50 / same-device FP32 p50")
    ] = 0.25,
) -> None:
    """mIoU vs latency report: picks per latency budget, Pareto fronts per output stride, plots; --baseline gates regressions."""
    from edgeseg.bench.results import load_results, merge_rows
    from edgeseg.report import build_report
    from edgeseg.report.gate import Tolerance, regressions

    gate = Tolerance(tolerance, latency_tolerance).check() if baseline else None
    spare_inputs({"--out": out}, [*results, *([baseline] if baseline else []), *(sensitivity_files or [])])
    base_rows = load_results(baseline) if baseline else []  # a bad baseline fails before any writing
    with console.status("writing report"):
        written = build_report(results, out, budgets=budget, device=device, artifacts=artifacts, sensitivity=sensitivity_files)
    out_console.print(f"wrote {out / 'report.md'}, report.html, results.csv and {sum(n.endswith('.png') for n in written)} plots to {out}")
    if gate is not None:
        problems = regressions(base_rows, merge_rows(*(load_results(p) for p in results)), gate)
        for line in problems:
            console.print(f"[red]regression[/red] {escape(line)}", soft_wrap=True)
        if problems:
            console.print(f"[red]{len(problems)} regression(s) against {baseline}[/red]")
            raise typer.Exit(1)
        out_console.print(f"no regression against {baseline} (mIoU tolerance {tolerance:g}, latency ratio +{100 * latency_tolerance:g} %)")


@app.command()
def pipeline(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/smoke.yaml")],
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<recipe name>)")] = None,
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated: onnx,openvino,coreml,jetson")] = "onnx,openvino,coreml,jetson",
    output_strides: Annotated[str, typer.Option("--output-strides", help="Comma-separated output strides")] = ",".join(
        map(str, OUTPUT_STRIDES)
    ),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: section.key=value")] = None,
    runs: Annotated[int | None, typer.Option("--runs", help="Timed runs per bench row (default: the recipe's)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Score accuracy on the first N images only")] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", help="Bench the rows of one output stride interleaved in N rounds (1: one after another)")
    ] = 5,
) -> None:
    """Train -> QAT/calibrate -> export every target at each OS -> bench -> report (resumable)."""
    from edgeseg.config import load_recipe
    from edgeseg.pipeline import Pipeline
    from edgeseg.sizes import parse_strides

    r = load_recipe(recipe, set_)
    event = render.pipeline_event(time.perf_counter())
    result = Pipeline(
        r,
        out or Path("runs") / r.name,
        targets=[t.strip() for t in targets.split(",") if t.strip()],
        output_strides=parse_strides(output_strides),
        event=event,
        bench_runs=runs,
        limit=limit,
        rounds=rounds,
    ).run()
    out_console.print(f"report: {result['report']}")


@app.command()
def check(
    model: Annotated[
        Path, typer.Argument(help="ONNX model, or an artifact folder: a Jetson bundle is checked as its engine will be built")
    ],
    target: Annotated[str, typer.Option("--target", help="Target whose rules apply (jetson)")] = "jetson",
    dla: Annotated[
        int | None, typer.Option("--dla", help="Also check the DLA restrictions for this DLA core (default: a bundle's own)")
    ] = None,
    trt_version: Annotated[
        int | None, typer.Option("--trt-version", help="TensorRT major version: 10 or 11 (default: a bundle's own, else 10)")
    ] = None,
) -> None:
    """Preflight an ONNX model or a Jetson bundle against TensorRT's rules: one line per violation; exit 1 on errors."""

    from edgeseg.export.preflight import check_input, check_onnx
    from edgeseg.sizes import check_dla_core

    what = check_input(model, trt_version=trt_version, dla=check_dla_core(dla))
    found = check_onnx(what.onnx, target, trt_version=what.trt_version, dla=what.dla, shapes=what.shapes)
    if render.print_violations(found, what.onnx, what.trt_version, what.dla):
        raise typer.Exit(1)


def _interrupted(signum: int = 2) -> None:
    # Every file is written to a temporary name and renamed when complete, so stopping here
    # leaves the previous files (or none), never half a file.
    what = "SIGTERM" if signum == 15 else "CTRL-C"
    console.print(f"[red]interrupted[/red] ({what}): stopped; no file was left half-written", highlight=False, soft_wrap=True)
    sys.exit(128 + signum)


def _on_sigterm(signum: int, frame: object) -> None:
    STATE["terminated"] = True  # Typer reports any KeyboardInterrupt as Exit(130): remember which
    raise Terminated()


def main() -> None:
    """Entry point: EdgesegError -> one red line, exit code 2 (traceback with --verbose)."""
    start = time.perf_counter()
    # A shell starts background jobs with SIGINT ignored, and Python keeps that; restore CTRL-C so
    # every command (train, export, bench) stops cleanly whichever way it was started.
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)  # SIGTERM stops as cleanly as CTRL-C (exit 143)
    # A child forked by a library (OpenVINO's and NNCF's telemetry senders, data workers) must not
    # inherit that handler: a child blocked in C (a DNS lookup under a lock copied by fork) cannot
    # run a Python handler, so SIGTERM could not end it and the parent would wait at exit forever.
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        code = app(standalone_mode=False)  # returns typer.Exit codes instead of raising
        if code == 130:  # Typer turns CTRL-C (KeyboardInterrupt) into Exit(130), silently
            _interrupted(15 if STATE.get("terminated") else 2)
        if isinstance(code, int) and code:
            sys.exit(code)
    except EdgesegError as exc:
        if STATE["verbose"]:
            console.print_exception()
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(128 + exc.signum if isinstance(exc, Interrupted) else 2)
    except Terminated:
        _interrupted(15)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Usage errors of Typer's (vendored) click: one line, exit 2, like every other error.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            sub = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
            hint = f" (see 'edgeseg{sub} --help')"
            console.print(f"[red]error:[/red] {exc.format_message()}{hint}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if type(exc).__name__ == "Abort":  # click turns CTRL-C into Abort
            _interrupted()
        raise
    logging.getLogger(__name__).debug("done in %.1fs", time.perf_counter() - start)
