"""bench_artifact: latency, memory and accuracy of one artifact with its own runtime -> BenchRow.

Latency is the model call alone: after a first run (timed with loading and compiling as
`first_inference_s`) and `warmup` untimed runs, `runs` calls are each timed with
time.perf_counter_ns on one fixed input (seeded standard normal: a convolutional network's
latency does not depend on the pixel values). Pre- and post-processing are timed separately, per
image, during the accuracy pass (or on one random image with --no-accuracy). See
edgeseg.bench.timing for full-load throughput and the device-side times some runners report.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg import __version__
from edgeseg.bench.accuracy import AccuracyResult, evaluate_runner
from edgeseg.bench.artifact import Artifact, open_artifact
from edgeseg.bench.device import device_record
from edgeseg.bench.memory import PeakMemory
from edgeseg.bench.results import BenchRow, load_results, save_results
from edgeseg.bench.runners import canonical_options, check_hint, check_options_apply, check_target_options, load_runner
from edgeseg.bench.stats import latency_stats
from edgeseg.bench.timing import Timing, at_full_load, full_load_runs, timed_runs, timing_fields, timing_notes
from edgeseg.data.sources import Source, open_source
from edgeseg.errors import CheckpointError, ConfigError, DataError, NumericalError
from edgeseg.export.base import Loaded
from edgeseg.export.io_spec import class_map, feed, io_of, output_problem, random_input

log = logging.getLogger(__name__)

# progress(stage, done, total) with stage "load", "latency" or "accuracy".
Progress = Callable[[str, int, int], None]


@dataclass
class BenchOptions:
    """How to bench; see `edgeseg bench --help` for each option."""

    runs: int = 50
    warmup: int = 10
    threads: int | None = None
    batch: int = 1
    accuracy: bool = True
    limit: int | None = None
    data_root: str | None = None
    data_format: str | None = None
    split: str | None = None
    precision_hint: str | None = None
    output_stride: int | None = None  # checkpoints only
    input_size: tuple[int, int] | None = None  # checkpoints only
    float_weights: bool = False  # quantized checkpoints only: run with quantization off
    # Options of some targets only (edgeseg.bench.runners.TARGET_OPTION_FLAGS); None: the target's default.
    device: str | None = None  # OpenVINO: CPU, GPU, NPU, AUTO (default: the artifact's, CPU)
    perf_hint: str | None = None  # OpenVINO PERFORMANCE_HINT: latency (default) or throughput
    compute_units: str | None = None  # Core ML: all (default), cpu_and_ne, cpu_and_gpu, cpu_only

    def check(self) -> None:
        for name, low in (("runs", 1), ("warmup", 0), ("batch", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name} {getattr(self, name)} is too small; use {low} or more")
        for name in ("threads", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} {value} is invalid; use 1 or more (or leave it out)")
        for name, value in canonical_options(self.target_options()).items():
            setattr(self, name, value)

    def target_options(self) -> dict[str, str | None]:
        """The options only some targets take, by BenchOptions field (see load_runner)."""
        return {"device": self.device, "perf_hint": self.perf_hint, "compute_units": self.compute_units}


def bench_artifact(path: str | Path, options: BenchOptions | None = None, progress: Progress | None = None) -> BenchRow:
    """Bench one artifact folder (or `.pt` checkpoint) and return its result row.

    Args:
        path: artifact folder written by `edgeseg export`, or a checkpoint for the torch row.
        options: runs, warm-up, threads, batch, data and accuracy settings.
        progress: called as progress(stage, done, total).
    """
    options = options or BenchOptions()
    options.check()
    art = open_with(path, options)
    timing = measure_latency(art, options, progress)
    return finish_row(art, options, timing, progress)


def finish_row(art: Artifact, options: BenchOptions, timing: Timing, progress: Progress | None = None) -> BenchRow:
    """Score the loaded artifact (unless --no-accuracy) and assemble its row from `timing`."""
    source, data = open_data(art, options) if options.accuracy else (None, None)
    acc: AccuracyResult | None = None
    if source is not None:
        norm = art.meta["normalization"]
        acc = evaluate_runner(
            timing.loaded.runner.run,
            source,
            input_size=art.input_size,
            mean=norm["mean"],
            std=norm["std"],
            names=art.meta["classes"]["names"],
            ignore_index=source.classes.ignore_index,
            batch=options.batch,
            limit=options.limit,
            progress=(lambda i, n: progress("accuracy", i, n)) if progress else None,
            io=io_of(art.meta),
        )
        pre_ms, post_ms = acc.preprocess_ms, acc.postprocess_ms
    else:
        pre_ms, post_ms = _time_pre_post(art, timing.first_output, repeats=min(options.runs, 10))
    if timing.prepare_ms:  # the runner's conversion to its runtime's input, outside the timed call
        pre_ms += float(np.mean(timing.prepare_ms)) / options.batch
    return _make_row(art, options, timing, acc, pre_ms, post_ms, data)


def open_with(path: str | Path, options: BenchOptions) -> Artifact:
    """open_artifact with the checkpoint settings of `options`."""
    return open_artifact(path, output_stride=options.output_stride, input_size=options.input_size, float_weights=options.float_weights)


def resolve_data(art: Artifact, options: BenchOptions) -> dict[str, Any]:
    """The split to score on: meta.json's data set unless --data/--format/--split say otherwise."""
    data = dict(art.meta.get("data") or {})
    fmt = options.data_format or data.get("format")
    if fmt is None:
        raise DataError(f"artifact '{art.path}' names no data set in its meta.json; pass --data ROOT --format F (or --no-accuracy)")
    if options.data_root and fmt == "synthetic":
        raise ConfigError(f"--data '{options.data_root}' given but the data format of '{art.path}' is synthetic; pass --format too")
    out = {"format": fmt, "split": options.split or data.get("split") or "val"}
    if fmt == "synthetic":
        out.update(root=None, synthetic=data.get("synthetic"))
    else:
        out["root"] = options.data_root or data.get("root")
    return out


def open_data(art: Artifact, options: BenchOptions) -> tuple[Source, dict[str, Any]]:
    """Open the split of resolve_data and check it has the artifact's classes."""
    data = resolve_data(art, options)
    source = open_source(data["format"], data["root"], data["split"], data.get("synthetic"))
    want = len(art.meta["classes"]["names"])
    if source.classes.num_classes != want:
        raise DataError(
            f"'{art.path}' predicts {want} classes but data format '{data['format']}' has {source.classes.num_classes}; "
            "pass the data set it was trained on with --data/--format"
        )
    return source, data


def load_timed(art: Artifact, options: BenchOptions) -> tuple[Timing, np.ndarray]:
    """Load the artifact and run it once: load time, first-inference time, memory peaks, and the
    input (batch of the options) the timed runs use."""
    x = random_input(io_of(art.meta), options.batch, art.input_size)
    mem = PeakMemory()
    mem.start()
    t0 = time.perf_counter_ns()
    loaded = load_runner(art, threads=options.threads, precision_hint=options.precision_hint, options=options.target_options())
    load_s = (time.perf_counter_ns() - t0) / 1e9
    if loaded.static_batch is not None and loaded.static_batch != options.batch:
        raise ConfigError(
            f"'{art.path}' was exported for batch {loaded.static_batch}; pass --batch {loaded.static_batch} or re-export with a dynamic batch"
        )
    y = loaded.runner.run(x)
    first_s = (time.perf_counter_ns() - t0) / 1e9
    _check_output(art, loaded, np.asarray(y), options.batch)
    first_output = np.array(y[0])  # a copy: some runners reuse their buffer
    log.info("%s: loaded with %s %s, first inference %.2fs", art.path, loaded.runtime, loaded.runtime_version, first_s)
    for failure in art.meta.get("verification_failures", []) if art.meta.get("verified") is False else []:
        log.warning("%s is NOT VERIFIED (exported with --force): %s", art.path, failure.get("error"))
    timing = Timing(loaded, [], first_s, None, first_output, load_s, None)
    timing.memory = mem
    return timing, x


def measure_latency(art: Artifact, options: BenchOptions, progress: Progress | None = None) -> Timing:
    """Load, first run, warm-up, then `runs` timed calls of the model alone (and as many at full
    load where the runner has it); peak memory over all."""
    timing, x = load_timed(art, options)
    total, done = options.warmup + options.runs, [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress("latency", done[0], total)

    timed_runs(timing, x, options.warmup, options.runs, tick)
    if at_full_load(timing.loaded):
        full_load_runs(timing, x, options.runs)
    timing.close_memory()
    return timing


def _check_output(art: Artifact, loaded: Loaded, y: np.ndarray, batch: int) -> None:
    problem = output_problem(y, io_of(art.meta), batch, len(art.meta["classes"]["names"]))
    if problem is None:
        return
    if "NaN" in problem:
        raise NumericalError(
            f"'{art.path}' returned {problem} with {loaded.runtime} ({art.precision}); re-export it or bench another precision"
        )
    raise CheckpointError(f"'{art.path}' returned {problem} with {loaded.runtime}; its meta.json does not match the model: re-export it")


def _time_pre_post(art: Artifact, output: np.ndarray, repeats: int) -> tuple[float, float]:
    """Per-image pre/post-processing time on a random image of the input size (no resize)."""
    image = np.random.default_rng(0).integers(0, 256, (*art.input_size, 3), dtype=np.uint8)
    norm, io = art.meta["normalization"], io_of(art.meta)
    pre = post = 0
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        feed(image, io, art.input_size, norm["mean"], norm["std"])
        t1 = time.perf_counter_ns()
        class_map(output, io, art.input_size)
        post += time.perf_counter_ns() - t1
        pre += t1 - t0
    return pre / 1e6 / repeats, post / 1e6 / repeats


def _io_label(meta: dict[str, Any]) -> str | None:
    io = io_of(meta)
    return None if io.plain else f"{io.input}->{io.output}"


@functools.lru_cache(maxsize=1)
def _device() -> dict[str, Any]:
    return device_record()


def _make_row(
    art: Artifact,
    options: BenchOptions,
    timing: Timing,
    acc: AccuracyResult | None,
    pre_ms: float,
    post_ms: float,
    data: dict[str, Any] | None,
) -> BenchRow:
    loaded = timing.loaded
    threads = options.threads or getattr(loaded.runner, "threads", None)
    stats = {k: round(v, 4) for k, v in latency_stats(timing.samples_ms).items()}
    measured = timing_fields(timing, options.batch)
    return BenchRow(
        runtime=loaded.runtime,
        runtime_version=loaded.runtime_version,
        target=art.target,
        precision=art.precision,
        device=_device(),
        provider=loaded.provider,
        precision_hint=loaded.precision_hint,
        threads=threads,
        batch=options.batch,
        output_stride=art.output_stride,
        input_shape=[options.batch, 3, *art.input_size],
        runs=options.runs,
        warmup=options.warmup,
        latency=stats,
        latency_samples_ms=[round(s, 4) for s in timing.samples_ms],
        throughput=measured.pop("throughput"),
        first_inference_s=round(timing.first_inference_s, 4),
        peak_mem_mb=None if timing.peak_mem_mb is None else round(timing.peak_mem_mb, 1),
        preprocess_ms=round(pre_ms, 4),
        postprocess_ms=round(post_ms, 4),
        miou=None if acc is None else acc.summary["miou"],
        pixel_acc=None if acc is None else acc.summary["pixel_acc"],
        per_class_iou=None if acc is None else acc.summary["per_class_iou"],
        num_images=0 if acc is None else acc.num_images,
        data=data,
        model_size_mb=round(art.model_size_mb, 4),
        artifact=str(art.path),
        artifact_sha256=art.sha256,
        quant_method=art.quant_method,
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        edgeseg_version=__version__,
        load_s=None if timing.load_s is None else round(timing.load_s, 4),
        peak_rss_mb=None if timing.peak_rss_mb is None else round(timing.peak_rss_mb, 1),
        round_p50_ms=None if timing.round_p50_ms is None else [round(v, 4) for v in timing.round_p50_ms],
        io=_io_label(art.meta),
        verified=False if art.meta.get("verified") is False else None,
        float_convs=len(art.meta.get("float_convs") or []) or None,
        notes="; ".join(timing_notes(timing)),
        **measured,
    )


def preflight(json_path: str | Path | None, paths: list[Path], options: BenchOptions, *, whole_command: bool = True) -> list[str]:
    """Check options, the results file, every artifact and its data before measuring anything.

    Returns the artifacts' targets. With `whole_command` (False: `paths` are part of a command
    whose other parts are checked apart), an option that none of them takes is refused.
    """
    options.check()
    if json_path is not None and Path(json_path).exists():
        load_results(json_path)
    targets = []
    for path in paths:
        art = open_with(path, options)
        check_hint(options.precision_hint, art.target)
        check_target_options(art.target, options.target_options())
        if options.accuracy:
            resolve_data(art, options)
        targets.append(art.target)
    if whole_command:
        check_options_apply(targets, options.target_options())
    return targets


def bench_into(
    json_path: str | Path, paths: list[Path], options: BenchOptions | None = None, progress: Callable[[Path], Progress | None] | None = None
) -> list[BenchRow]:
    """Bench each path and append its row to the results file as soon as it is measured.

    Everything is checked first (preflight), so a bad path or a results file of another schema
    fails before any measuring, and an interrupted run keeps the rows already measured.

    Args:
        json_path: results file (created, or merged into).
        paths: artifact folders and/or `.pt` checkpoints.
        options: shared by every path.
        progress: progress(path) returns the progress callback for that path.
    """
    options = options or BenchOptions()
    preflight(json_path, paths, options)
    rows = []
    for path in paths:
        row = bench_artifact(path, options, progress(path) if progress else None)
        save_results(json_path, [row])
        rows.append(row)
    return rows
