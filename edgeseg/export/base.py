"""The small interface every target implements, and the explicit table of targets.

A target is one module that owns everything about its runtime: its name, the runtime's name and
label, the pip extra, the precisions and pipeline variants it exports, whether its artifacts run
here, how an export is described, `export` and `load`. bench, pipeline, results, report and the
CLI derive what they know from TARGETS, so a new target is one module plus one line below.

The device side (`load`, `describe`, `can_run_here`) of a target module imports only numpy,
Pillow and the target's own SDK; its export side imports torch lazily, inside functions.

An artifact is a folder: the model files plus `meta.json` (see edgeseg.export.meta), written
atomically (edgeseg.fsutil.atomic_dir), so bench and predict need nothing else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeseg.errors import TargetError, did_you_mean

# Target name -> module implementing the Target protocol (resolved lazily: heavy SDKs are
# imported only inside these modules).
TARGETS: dict[str, str] = {
    "onnx": "edgeseg.export.onnx",
    "openvino": "edgeseg.export.openvino",
    "jetson": "edgeseg.export.tensorrt",
    "coreml": "edgeseg.export.coreml",
}

# w8: int8 weights, FP16 activations (Core ML, for Neural Engines before A17 Pro / M4, where W8A8 is no faster).
PRECISIONS = ("fp32", "fp16", "int8", "w8")


@dataclass
class ExportRequest:
    """What the user asked for; one request is exported to one artifact folder per target."""

    checkpoint: Path
    precision: str = "int8"
    output_stride: int | None = None
    input_size: tuple[int, int] | None = None
    dynamic_batch: bool = False
    out_dir: Path = Path("export")
    options: dict[str, Any] = field(default_factory=dict)  # target-specific: allow_fallback, ptq, dla, ...


class Runner(Protocol):
    """A loaded artifact: `run(x)` maps a float32 NCHW array to float32 logits.

    bench reads a few optional members where a runner has them (getattr, so a runner without them
    still works): `threads`; `prepare(x)` + `run_prepared(p)`, which split `run` so a conversion
    to the runtime's own input type (Core ML's PIL images) is timed as pre-processing, not as the
    model; `last_times`, the device-side milliseconds of the last run ({"h2d", "engine", "d2h"}:
    TensorRT's CUDA events); `perf_hint`, `infer_requests` and `run_full_load(x, count)`, the
    seconds of `count` inferences with every parallel request busy (OpenVINO's throughput hint).
    """

    def run(self, x: Any) -> Any: ...


@dataclass
class Loaded:
    """A loaded runner and how it runs: the `runtime`/`provider` columns of a result row."""

    runner: Runner
    runtime: str
    runtime_version: str | None
    provider: str
    precision_hint: str | None = None
    static_batch: int | None = None  # the batch size the model was built for, None when dynamic


class Target(Protocol):
    name: str  # the --target name and meta.json's "target"
    runtime: str  # the runtime bench uses (a result row's "runtime")
    runtime_label: str  # how reports name that runtime
    extra: str  # the pip extra that installs the runtime: pip install "edgeseg[<extra>]"
    precisions: tuple[str, ...]  # what `export --precision` accepts for this target
    variants: tuple[tuple[str, str | None], ...]  # (precision, ptq) the pipeline exports
    precision_hints: tuple[str, ...]  # execution precisions `bench --precision-hint` accepts
    # Optional (read with getattr, default {}): `bench_options`, BenchOptions field -> the values
    # the target's `load` takes for it (OpenVINO: device, perf_hint; Core ML: compute_units), and
    # `check_bench_options(**options)`, which raises when this machine cannot honour them.

    def is_available(self) -> tuple[bool, str]:
        """Whether this machine can export: (True, '') or (False, why, with the install command)."""

    def can_run_here(self) -> tuple[bool, str]:
        """Whether bench can run this target's artifacts on this machine (and why not)."""

    def describe(self, meta: dict[str, Any], folder: Path | None) -> str:
        """One line on how an exported artifact was verified (for the CLI)."""

    def export(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        """Write the artifact's model files into folder `out`; return its meta.json content."""

    def load(
        self, artifact: Path, meta: dict[str, Any], *, threads: int | None = None, precision_hint: str | None = None, **options: Any
    ) -> Loaded:
        """Load an artifact for inference with this target's own runtime.

        `options` are only those the target declares in its `bench_options` (bench passes no
        others): a target without `bench_options` takes none."""


def get_target(name: str) -> Target:
    """Resolve a target by name from TARGETS (did-you-mean on typos)."""
    if name not in TARGETS:
        raise TargetError(f"unknown target '{name}'{did_you_mean(name, TARGETS)}; use one of {', '.join(TARGETS)}")
    try:
        module = importlib.import_module(TARGETS[name])
    except ModuleNotFoundError as exc:
        if exc.name == TARGETS[name]:
            raise TargetError(
                f"target '{name}' is not part of this edgeseg install ({TARGETS[name]} is missing); upgrade edgeseg"
            ) from None
        raise
    return module.TARGET


def all_targets() -> list[Target]:
    """Every target of the table, in its order."""
    return [get_target(name) for name in TARGETS]


def runtime_labels() -> dict[str, str]:
    """Runtime name -> label, for every target's runtime plus the PyTorch baseline."""
    return {**{t.runtime: t.runtime_label for t in all_targets()}, "torch": "torch"}


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None (without importing it)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
