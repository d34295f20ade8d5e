"""Jetson target: a TensorRT bundle (ONNX + build.json + trtexec lines), engine build, runner.

TensorRT needs an NVIDIA GPU, so the bundle is built here and checked statically (edgeseg.export.
preflight); the engine is built on the device, by `edgeseg bench` on first use (cached next to
the bundle) or by `edgeseg export --build-engine` where tensorrt is installed. The engine build
and the runner live in edgeseg.export.tensorrt_engine; this module writes the bundle.

Precision per TensorRT major (both documented in build.json and as trtexec lines):
- INT8: the Q/DQ ONNX of a calibrated/QAT checkpoint, as a strongly typed network: TensorRT
  takes the scales from the graph and never calibrates. TensorRT 11 is always strongly typed
  (it removed --int8/--fp16, BuilderFlag.INT8/FP16 and implicit calibration); on 10.x strong
  typing is asked for (--stronglyTyped / NetworkDefinitionCreationFlag.STRONGLY_TYPED), except
  on DLA, where TensorRT 10 builds with the INT8+FP16 flags (weakly typed, still explicit Q/DQ).
- FP16: on 10.x the float ONNX with --fp16 (BuilderFlag.FP16); on 11.x an FP16 ONNX
  (model_fp16.onnx, float weights/activations converted by onnxruntime's float16 tool, FP32
  model inputs/outputs kept), built strongly typed.
- FP32: the float ONNX, no flags.
DLA (`dla_core`) runs FP16/INT8 only, with GPU fallback for the layers it cannot run.

The INT8 bundle's float regions (upsampling, concats, the logits, layers kept float) are FP16 in
the ONNX itself (`--float-regions fp16`, the default, as NVIDIA advises for strongly typed Q/DQ
networks): the graph is raised to opset 19, where Q/DQ scales may be FP16, and converted with
onnxruntime's float16 tool; weights stay int8 initializers, Q/DQ placement and zero points are
unchanged. A strongly typed network runs each layer in its ONNX type, so without this step those
regions would run in FP32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, NumericalError, TargetError, missing_dependency
from edgeseg.export.base import ExportRequest, Loaded, package_version
from edgeseg.export.io_spec import IOSpec, feed
from edgeseg.export.tensorrt_engine import (
    BUILD_FILE,
    CACHE_FILE,
    ENGINE_FILE,
    FP16_FILE,
    TensorRTRunner,
    build_engine,
    strongly_typed,
)
from edgeseg.fsutil import write_bytes, write_json, write_text

MODEL_FILE = "model.onnx"
PREFLIGHT_FILE = "preflight.txt"
DEFAULT_WORKSPACE_GB = 2.0
FLOAT_REGIONS = ("fp16", "fp32")
# The first opset whose QuantizeLinear/DequantizeLinear take FP16 scales (and so give FP16 out).
FP16_QDQ_OPSET = 19


def _dims(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(cfg: dict[str, Any], trt_major: int) -> str:
    """The trtexec line equivalent to build_engine() for a TensorRT major version."""
    precision, dla = cfg["precision"], cfg.get("dla_core")
    onnx_file = cfg["onnx"][str(trt_major)]
    args = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={ENGINE_FILE}"]
    if trt_major < 11:
        if strongly_typed(precision, trt_major, dla):
            args.append("--stronglyTyped")
        else:
            args += {"int8": ["--int8", "--fp16"], "fp16": ["--fp16"], "fp32": []}[precision]
    if dla is not None:
        args += [f"--useDLACore={dla}", "--allowGPUFallback"]
    for name, prof in cfg["inputs"].items():
        if not (prof["min"] == prof["opt"] == prof["max"]):
            args += [
                f"--minShapes={name}:{_dims(prof['min'])}",
                f"--optShapes={name}:{_dims(prof['opt'])}",
                f"--maxShapes={name}:{_dims(prof['max'])}",
            ]
    args += [f"--memPoolSize=workspace:{round(cfg['workspace_gb'] * 1024)}M", f"--timingCacheFile={CACHE_FILE}"]
    return " ".join(args)


def build_config(
    precision: str, inputs: dict[str, dict[str, list[int]]], *, dla_core: int | None, workspace_gb: float, fp16_onnx: bool
) -> dict[str, Any]:
    """build.json: everything build_engine and trtexec need, per TensorRT major."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"--precision {precision} is unknown; use fp32, fp16 or int8")
    if dla_core is not None and precision == "fp32":
        raise ConfigError("--dla runs FP16 or INT8 only; use --precision fp16 or int8 with --dla")
    if workspace_gb <= 0:
        raise ConfigError(f"workspace {workspace_gb} GB is invalid; use a positive size, e.g. 2")
    cfg: dict[str, Any] = {
        "precision": precision,
        "workspace_gb": workspace_gb,
        "dla_core": dla_core,
        "gpu_fallback": dla_core is not None,
        "inputs": inputs,
        "engine": ENGINE_FILE,
        "timing_cache": CACHE_FILE,
        "onnx": {"10": MODEL_FILE, "11": FP16_FILE if (precision == "fp16" and fp16_onnx) else MODEL_FILE},
    }
    cfg["strongly_typed"] = {str(v): strongly_typed(precision, v, dla_core) for v in (10, 11)}
    cfg["trtexec"] = {str(v): trtexec_command(cfg, v) for v in (10, 11)}
    if precision == "fp16" and not fp16_onnx:
        cfg["trtexec"]["11"] = (
            "unavailable: TensorRT 11 needs an FP16 ONNX; install onnxruntime and re-export (or run modelopt.onnx.autocast)"
        )
    return cfg


def onnx_inputs(path: Path, max_batch: int = 8) -> dict[str, dict[str, list[int]]]:
    """Input shapes as an optimisation profile (min = opt = max for a static model)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims[1:]):
            raise TargetError(f"input '{inp.name}' of '{path}' has dynamic spatial dims {dims}; export with a fixed --input-size")
        if dims[0] > 0:
            out[inp.name] = {"min": dims, "opt": dims, "max": dims}
        else:
            one = [1, *dims[1:]]
            out[inp.name] = {"min": one, "opt": one, "max": [max_batch, *dims[1:]]}
    return out


def fp16_onnx(src: Path, dst: Path, min_opset: int = 0) -> bool:
    """Convert float weights and activations to FP16, keeping FP32 model inputs/outputs.

    Uses onnxruntime's float16 converter (from onnxconverter-common) and its topological sort
    (the converter appends the I/O casts at the end of the graph). `min_opset`: raise the graph to
    at least this opset first (onnx's version converter), e.g. FP16_QDQ_OPSET for a Q/DQ graph.
    Returns False when it is not installed; build.json then says how to make the FP16 ONNX on the device.
    """
    try:
        import onnx
        from onnx import version_converter
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError:
        return False
    model = onnx.load(str(src))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < min_opset:
        model = version_converter.convert_version(model, min_opset)
    half = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
    half.topological_sort()
    onnx.checker.check_model(half.model)
    write_bytes(dst, half.model.SerializeToString())
    return True


def fp16_agreement(
    fp32_path: Path,
    fp16_path: Path,
    meta: dict[str, Any],
    frames: tuple[list[np.ndarray], str],
    io: IOSpec | None = None,
) -> dict[str, Any]:
    """Class agreement of the FP16 ONNX with the FP32 ONNX in onnxruntime, on `frames` (uint8
    images of the artifact's data and their description, common.verification_frames), each fed as
    `io` says (both ONNX take and give the same)."""
    from edgeseg.export.common import argmax_agreement, onnx_reference

    io = io or IOSpec()
    frames, desc = frames
    norm, size = meta["normalization"], tuple(meta["input_size"])
    inputs = [feed(f, io, size, norm["mean"], norm["std"]) for f in frames]
    ref, half = onnx_reference(fp32_path, inputs), onnx_reference(fp16_path, inputs)
    if io.output == "labels":
        return {"reference": "onnxruntime FP32 ONNX", "data": desc, "argmax_agreement": float((half == ref).mean())}
    return {
        "reference": "onnxruntime FP32 ONNX",
        "data": desc,
        "argmax_agreement": argmax_agreement(half, ref),
        "max_abs_diff": float(np.abs(half - ref).max()),
    }


class JetsonTarget:
    """The Target protocol for Jetson/TensorRT (see edgeseg.export.base)."""

    name = "jetson"
    runtime = "tensorrt"
    runtime_label = "TensorRT"
    extra = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    variants: tuple[tuple[str, str | None], ...] = (("int8", None),)
    precision_hints: tuple[str, ...] = ()
    # uint8 NCHW pixels in (normalised by the graph's first layers), the class map out as int32:
    # TensorRT's ArgMax is a TopK layer whose indices are int32. The bundle's ONNX is wrapped
    # before its build config and preflight are written (export_bundle), so both see what runs.
    io_defaults = ("image", "labels")
    io_layout = "NCHW"
    labels_dtype = "int32"
    io_in_export = True

    def is_available(self) -> tuple[bool, str]:
        # The bundle needs onnx only; building and running an engine need tensorrt + a GPU.
        try:
            import onnx  # noqa: F401
        except ImportError:
            return False, str(missing_dependency("onnx", "onnx"))
        return True, ""

    def export(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        return export_bundle(request, out)

    def can_run_here(self) -> tuple[bool, str]:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            return (
                False,
                'TensorRT needs an NVIDIA GPU with tensorrt installed (JetPack\'s on a Jetson, or pip install "edgeseg[tensorrt]")',
            )
        return True, ""

    def describe(self, meta: dict[str, Any], folder: Path | None) -> str:
        report = (folder / "preflight.txt") if folder is not None else None
        head = [ln for ln in report.read_text().splitlines() if ln.startswith("#")] if report is not None and report.is_file() else []
        return "preflight " + "; ".join(h.lstrip("# ") for h in head) + f" (see {report})"

    def load(self, artifact: Path, meta: dict[str, Any], *, threads: int | None = None, precision_hint: str | None = None) -> Loaded:
        ok, why = self.can_run_here()
        if not ok:
            raise TargetError(f"cannot run '{artifact}' here: {why}")
        runner = TensorRTRunner(Path(artifact))
        return Loaded(runner, self.runtime, package_version("tensorrt"), _provider(runner.dla_core), None, runner.static_batch)


def _provider(dla_core: int | None) -> str:
    """GPU, or the DLA core the engine runs on (with GPU fallback)."""
    return f"DLA{dla_core} (GPU fallback)" if dla_core is not None else "GPU"


def export_bundle(request: ExportRequest, out: Path) -> dict[str, Any]:
    """Write the Jetson bundle into `out`: ONNX (+ FP16 ONNX), build.json, preflight; return meta."""
    from edgeseg.export.common import FLOAT_AGREEMENT, gate, source_onnx, verification_frames
    from edgeseg.export.io_wrap import resolve_io, wrap_checked_onnx
    from edgeseg.export.prepare import load_for_export, tool_versions

    opts = request.options
    dla, trt_major = opts.get("dla"), int(opts.get("trt_version", 10))
    model, ckpt, meta = load_for_export(request)
    if request.precision == "int8" and opts.get("ptq"):
        raise ConfigError("--ptq applies to OpenVINO only; TensorRT builds the Q/DQ ONNX of a calibrated or QAT checkpoint")
    from edgeseg.config import recipe_from_dict

    opset = int(opts.get("opset") or recipe_from_dict(ckpt["recipe"]).export.opset)  # the recipe's, as for the onnx target
    io = resolve_io(TARGET, opts)
    report = source_onnx(
        model, out / MODEL_FILE, meta=meta, int8=request.precision == "int8", dynamic_batch=request.dynamic_batch, opset=opset
    )
    verification = {
        "reference": "PyTorch (export_onnx)",
        "argmax_agreement": report.get("argmax_agreement"),
        "max_abs_diff": report.get("max_abs_diff"),
    }
    # The images every check of the bundle below runs on, read once (a plain FP32 bundle has none).
    needs_images = request.precision != "fp32" or not io.plain
    frames = verification_frames(meta, int(opts.get("verify_images", 16))) if needs_images else ([], "")
    if request.precision == "int8":  # weights as int8 initializers (4x smaller), proven identical in onnxruntime
        from edgeseg.export.qdq_weights import int8_weights

        norm, size = meta["normalization"], tuple(meta["input_size"])
        images = [feed(f, IOSpec(), size, norm["mean"], norm["std"]) for f in frames[0]]
        meta["int8_weights"] = {**int8_weights(out / MODEL_FILE, out / MODEL_FILE, images), "data": frames[1]}
    # The core ONNX is verified against torch; wrapped (uint8 image in, class map out) before
    # anything else reads it, and checked against the core in onnxruntime.
    meta["io"] = wrap_checked_onnx(out / MODEL_FILE, io, meta, "jetson", frames)["io"] if not io.plain else io.as_meta()
    if request.precision == "int8":
        meta["float_regions"] = _float_regions(model, out / MODEL_FILE, meta, frames, io, str(opts.get("float_regions") or "fp16"))
    has_fp16 = request.precision == "fp16" and fp16_onnx(out / MODEL_FILE, out / FP16_FILE)
    if has_fp16:
        verification = {"fp16_onnx": fp16_agreement(out / MODEL_FILE, out / FP16_FILE, meta, frames, io)}
        agree, need = verification["fp16_onnx"]["argmax_agreement"], float(opts.get("min_agreement", FLOAT_AGREEMENT))
        message = f"the FP16 ONNX agrees with FP32 on {agree:.2%} of pixels (< {need:.1%}); use TensorRT 10 with --fp16 or report this"
        gate(agree >= need, NumericalError(message), argmax_agreement=agree)
    inputs = onnx_inputs(out / MODEL_FILE)
    workspace = float(opts.get("workspace_gb", DEFAULT_WORKSPACE_GB))
    cfg = build_config(request.precision, inputs, dla_core=dla, workspace_gb=workspace, fp16_onnx=has_fp16)
    preflight(out, cfg, trt_major)
    write_json(out / BUILD_FILE, cfg)
    names = _io_names(out / MODEL_FILE)
    meta.update({
        "target": "jetson", "precision": request.precision, "model_file": MODEL_FILE, "input_name": names[0], "output_name": names[1],
        "tool_versions": tool_versions("torch", "onnx", "onnxruntime", "tensorrt"),
        "tensorrt": {"build": BUILD_FILE, "trt_version": trt_major, "dla_core": dla, "preflight": PREFLIGHT_FILE},
        "verification": verification,
    })  # fmt: skip
    if request.precision != "int8":
        meta["quant"] = None
    if opts.get("build_engine"):
        build_engine(out, workspace_gb=workspace, dla_core=dla)
    return meta


def check_float_regions(precision: str) -> str:
    """`precision` when it is one of FLOAT_REGIONS (--float-regions), else the one-line ConfigError."""
    if precision not in FLOAT_REGIONS:
        raise ConfigError(f"--float-regions {precision} is unknown; use fp16 (the default) or fp32")
    return precision


def _float_regions(
    model: Any, path: Path, meta: dict[str, Any], frames: tuple[list[np.ndarray], str], io: IOSpec, precision: str
) -> dict[str, Any]:
    """Convert the INT8 ONNX's float regions to FP16 in place (precision "fp16") and verify it:
    class agreement with the FP32-region graph and with PyTorch's fake-quant model on `frames`,
    both graphs run once each in onnxruntime, literally (common.onnx_session), gated at
    INT8_AGREEMENT (an FP16 region moves activations across INT8 rounding steps, as a second INT8
    engine does)."""
    from edgeseg.export.common import INT8_AGREEMENT, gate, onnx_reference
    from edgeseg.fsutil import scratch_dir

    if check_float_regions(precision) == "fp32":
        return {"precision": "fp32", "note": "layers outside Q/DQ run in FP32 (--float-regions fp32)"}
    norm, size = meta["normalization"], tuple(meta["input_size"])
    inputs = [feed(f, io, size, norm["mean"], norm["std"]) for f in frames[0]]
    with scratch_dir(path.parent) as tmp:
        if not fp16_onnx(path, tmp / "fp16.onnx", min_opset=FP16_QDQ_OPSET):
            raise missing_dependency("onnxruntime", "onnx")
        half = _classes(onnx_reference(tmp / "fp16.onnx", inputs, literal=True), io)
        vs_fp32 = float((half == _classes(onnx_reference(path, inputs, literal=True), io)).mean())
        vs_torch = _torch_agreement(model, half, meta, frames[0])
        (tmp / "fp16.onnx").replace(path)
    agree = min(vs_fp32, vs_torch)
    gate(
        agree >= INT8_AGREEMENT,
        NumericalError(
            f"the INT8 bundle with FP16 float regions agrees with its FP32-region graph / PyTorch on "
            f"{vs_fp32:.2%} / {vs_torch:.2%} of pixels (< {INT8_AGREEMENT:.0%}); export with --float-regions fp32"
        ),
        argmax_agreement=agree,
    )
    return {
        "precision": "fp16",
        "opset": FP16_QDQ_OPSET,
        "data": frames[1],
        "agreement_vs_fp32_regions": vs_fp32,
        "agreement_vs_torch": vs_torch,
        "reference": "onnxruntime CPU without graph optimizations; PyTorch fake-quant model",
    }


def _classes(outputs: np.ndarray, io: IOSpec) -> np.ndarray:
    """N x H x W class maps of a batch of outputs at the model's input size (labels, or logits' argmax)."""
    return outputs if io.output == "labels" else outputs.argmax(1)


def _torch_agreement(model: Any, classes: np.ndarray, meta: dict[str, Any], frames: list[np.ndarray]) -> float:
    """Share of pixels where `classes` (N x H x W, one map per frame) is the PyTorch model's class on `frames`."""
    import torch

    norm, size = meta["normalization"], tuple(meta["input_size"])
    with torch.no_grad():
        want = np.concatenate(
            [model(torch.from_numpy(feed(f, IOSpec(), size, norm["mean"], norm["std"]))).argmax(1).numpy() for f in frames]
        )
    return float((classes == want).mean())


def preflight(bundle: Path, cfg: dict[str, Any], trt_major: int) -> None:
    """Check the bundle's ONNX for TensorRT 10 and 11 into preflight.txt; errors for `trt_major` raise."""
    from edgeseg.export.preflight import check_onnx

    lines, errors = [], []
    for major in (10, 11):
        name = cfg["onnx"][str(major)]
        found = check_onnx(bundle / name, "jetson", trt_version=major, dla=cfg["dla_core"], shapes=cfg["inputs"])
        n_err = sum(v.severity == "error" for v in found)
        lines += [f"# TensorRT {major}.x ({name}): {n_err} errors, {len(found) - n_err} warnings", *(str(v) for v in found)]
        errors += [v for v in found if v.severity == "error" and major == trt_major]
    write_text(bundle / PREFLIGHT_FILE, "\n".join(lines) + "\n")
    if errors:
        raise TargetError(f"TensorRT {trt_major} preflight found {len(errors)} errors, first: {errors[0]}; 'edgeseg check' lists them all")


def _io_names(path: Path) -> tuple[str, str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return graph.input[0].name, graph.output[0].name


TARGET = JetsonTarget()
