"""OpenVINO target: IR (.xml/.bin) from the ONNX of the same checkpoint, verified on this CPU.

FP32 converts the float ONNX with no weight compression; FP16 compresses the weights to FP16
(`save_model(compress_to_fp16=True)`); INT8 converts the Q/DQ ONNX of a calibrated or QAT
checkpoint, so OpenVINO runs the ranges edgeseg trained. `ptq="nncf"` instead quantizes the
float IR with NNCF's own post-training quantization, as a point of comparison.

Every export is verified before it is declared written: the IR is compiled on the CPU and
compared with onnxruntime on images of the artifact's data set (argmax agreement, at the gates of
edgeseg.export.common: FLOAT_AGREEMENT, INT8_AGREEMENT; an NNCF IR against the FP32 model, at
INT8_AGREEMENT like edgeseg's own INT8 IR), and the compiled runtime model is read back so every
convolution of an INT8 IR is proven to run in u8/i8; fallbacks fail the export unless
`allow_fallback`.

The CPU's default inference precision on a CPU with AVX-512 BF16 or AMX is bf16, so the FP32
and INT8 artifacts pin INFERENCE_PRECISION_HINT to f32 (INT8 layers run in INT8 either way);
the FP16 artifact uses f16 where the CPU has it and the CPU's reduced default (bf16) otherwise.
The hint is recorded in meta.json ("precision_hint") and used again by `load` and bench.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, TargetError, missing_dependency
from edgeseg.export.base import ExportRequest, Loaded, package_version
from edgeseg.export.common import FLOAT_AGREEMENT, INT8_AGREEMENT, onnx_reference, require_int8_ranges
from edgeseg.export.io_spec import IOSpec, model_input
from edgeseg.export.openvino_ir import (
    MODEL_FILE,
    _ov,
    compile_ir,
    ir_from_onnx,
    nncf_quantize_ir,
    precision_hint,
    precision_report,
    run_compiled,
    verify_ir,
)

log = logging.getLogger(__name__)

PRECISION_REPORT = "precision_report.json"
# The gates: FLOAT_AGREEMENT (FP32/FP16 IR vs the FP32 ONNX) and INT8_AGREEMENT (edgeseg's INT8 IR
# on the signed grid vs its Q/DQ ONNX; an NNCF IR vs the FP32 ONNX), from edgeseg.export.common.
# The shipped INT8 IR runs non-negative tensors on a finer u8 grid than the signed ONNX it is
# compared with, so a few more near-ties flip (measured 99.1-99.5% on CamVid, 98.7-98.9% on the
# smoke model). The conversion itself is checked at INT8_AGREEMENT on the signed grid first.
LOWERED_AGREEMENT = 0.97
PTQ_METHODS = ("nncf",)
DEVICES = ("CPU", "GPU", "NPU", "AUTO")  # what `bench --device` takes (AUTO: OpenVINO picks among those here)
PERF_HINTS = ("latency", "throughput")  # `bench --hint`: OpenVINO's PERFORMANCE_HINT, in lower case
NNCF_FIX = (
    "NNCF's post-training quantization lost too much against the FP32 model; calibrate on more representative images "
    "(recipe quant.calib_list, quant.calib_num_images) or export a calibrated or QAT checkpoint without --ptq"
)


class OpenVINORunner:
    """A compiled IR with one infer request: `run(x)` maps the model's input to its output
    (float32 NCHW to float32 logits, or what meta.json's "io" says: edgeseg.export.io_spec).

    With `copy=False` (bench), `run` returns a view of the request's output tensor, valid until
    the next call, so timing measures inference and not a copy. What the model was compiled with
    is read back from it: the precision (`hint`), PERFORMANCE_HINT (`perf_hint`), the devices
    that run it (`execution_devices`, what AUTO chose) and OPTIMAL_NUMBER_OF_INFER_REQUESTS
    (`infer_requests`), the size of the queue `run_full_load` keeps busy.
    """

    def __init__(self, compiled: Any, *, copy: bool = True) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.copy = copy
        self.hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        mode = compiled.get_property("PERFORMANCE_HINT")  # a PerformanceMode, or its name from some plugins
        self.perf_hint = str(getattr(mode, "name", mode)).rsplit(".", 1)[-1].lower()
        self.infer_requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.execution_devices = [str(d) for d in compiled.get_property("EXECUTION_DEVICES")]
        shape = compiled.inputs[0].get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        self._queue: Any = None

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: model_input(x)})
        out = self.request.get_output_tensor(0).data
        return np.array(out, copy=True) if self.copy else out

    def run_full_load(self, x: np.ndarray, count: int) -> float:
        """Seconds to run `count` inferences of `x` through an AsyncInferQueue of `infer_requests`
        requests, each started as soon as one is free (the throughput hint's full load)."""
        if self._queue is None:
            self._queue = _ov().AsyncInferQueue(self.compiled, self.infer_requests)
        x = model_input(x)
        start = time.perf_counter_ns()
        for _ in range(count):
            self._queue.start_async({0: x}, share_inputs=True)  # x never changes: no copy per request
        self._queue.wait_all()
        return (time.perf_counter_ns() - start) / 1e9


class OpenVINOTarget:
    """The Target protocol for OpenVINO (see edgeseg.export.base)."""

    name = "openvino"
    runtime = "openvino"
    runtime_label = "OpenVINO"
    extra = "openvino"
    precisions = ("fp32", "fp16", "int8")
    variants: tuple[tuple[str, str | None], ...] = (("fp32", None), ("fp16", None), ("int8", None), ("int8", "nncf"))
    precision_hints = ("f32", "bf16", "f16")
    bench_options = {"device": DEVICES, "perf_hint": PERF_HINTS}
    # A decoded frame in (uint8 NHWC, normalised by the PrePostProcessor), a uint8 class map out.
    io_defaults = ("image", "labels")
    io_layout = "NHWC"
    labels_dtype = "uint8"

    def is_available(self) -> tuple[bool, str]:
        try:
            _ov()
        except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
            return False, str(exc)
        return True, ""

    def can_run_here(self) -> tuple[bool, str]:
        if package_version("openvino") is None:
            return False, str(missing_dependency("openvino", "openvino"))
        return True, ""

    def describe(self, meta: dict[str, Any], folder: Path | None) -> str:
        v = meta.get("verification") or {}
        layers = f", {v['weighted_layers_int8']}/{v['weighted_layers']} conv/matmul layers run INT8" if meta["precision"] == "int8" else ""
        deployed = v.get("deployed_hint_agreement")
        also = f"; at its {meta.get('precision_hint')} hint {deployed:.4%}" if deployed is not None else ""
        if v.get("exact_grid_agreement") is not None:
            also += f"; its signed-grid twin {v['exact_grid_agreement']:.4%}"
        return f"OpenVINO (f32) vs {v.get('reference')}: argmax agreement {v.get('argmax_agreement', 0):.4%}{also}{layers}"

    def export(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        return export_openvino(request, out)

    def wrap_io(self, folder: Path, meta: dict[str, Any], io: IOSpec) -> dict[str, Any]:
        """Wrap the verified core IR in `folder` for `io` (edgeseg.export.io_wrap) and check the
        wrapped IR against it on 16 images of the artifact's data, compiled as bench compiles both."""
        from edgeseg.export.common import verification_frames
        from edgeseg.export.io_wrap import check_agreement, io_agreement, wrap_openvino

        xml, staged = folder / meta["model_file"], folder / "wrapped.xml"
        norm = meta["normalization"]
        output_name = wrap_openvino(xml, staged, io, norm["mean"], norm["std"])
        hint = meta.get("precision_hint") or ("f32" if meta["precision"] == "fp32" else None)
        frames, desc = verification_frames(meta, 16)
        core = OpenVINORunner(compile_ir(xml, hint=hint))
        wrapped = OpenVINORunner(compile_ir(staged, hint=hint))
        agreement = io_agreement(core.run, wrapped.run, frames, io, norm["mean"], norm["std"])
        # Released in the reverse order of their making (OpenVINO restores the thread's signal
        # stack on release: see edgeseg.train.loop.drop_alternate_signal_stack), and before
        # the .bin files they map are replaced.
        del wrapped
        del core
        check_agreement(agreement, io, self.name)
        staged.replace(xml)
        staged.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        verification = {"reference": "the core IR (tensor in, logits out), OpenVINO CPU", "data": desc, "agreement": agreement}
        return {**meta, "output_name": output_name, "io": {**io.as_meta(), "verification": verification}}

    def check_bench_options(self, *, device: str | None = None, perf_hint: str | None = None) -> None:
        """Refuse a device OpenVINO does not list here, or a hint it does not have (one line each)."""
        if perf_hint is not None and perf_hint not in PERF_HINTS:
            raise ConfigError(f"--hint '{perf_hint}' is not an OpenVINO performance hint; use one of {', '.join(PERF_HINTS)}")
        if device is None or device == "AUTO":  # AUTO picks among the devices that are here
            return
        available = [str(d) for d in _ov().Core().available_devices]
        if not any(d == device or d.split(".")[0] == device for d in available):
            raise TargetError(
                f"OpenVINO device '{device}' is not available here (available: {', '.join(available) or 'none'}); "
                f"pass --device {' or '.join([*dict.fromkeys(d.split('.')[0] for d in available), 'AUTO'])}"
            )

    def load(
        self,
        artifact: Path,
        meta: dict[str, Any],
        *,
        threads: int | None = None,
        precision_hint: str | None = None,
        device: str | None = None,
        perf_hint: str | None = None,
    ) -> Loaded:
        """Compile for `device` (default: meta.json's, CPU) with PERFORMANCE_HINT `perf_hint`
        (default latency); precision: `precision_hint`, else meta.json's, else f32 for an FP32
        artifact (OpenVINO would otherwise run it in bf16 on CPUs that have it), else the
        runtime's default. What it compiled with is read back and recorded."""
        device = device or meta.get("device", "CPU")
        # Listing the devices costs ~50 ms (inside load_s): the CPU plugin is always there.
        self.check_bench_options(device=None if device == "CPU" else device, perf_hint=perf_hint)
        if threads and device in ("GPU", "NPU"):
            raise ConfigError(f"--threads sets OpenVINO's CPU threads; leave it out with --device {device}")
        hint = precision_hint or meta.get("precision_hint") or ("f32" if meta["precision"] == "fp32" else None)
        xml = Path(artifact) / meta["model_file"]
        compiled = compile_ir(xml, hint=hint, device=device, threads=threads, performance=(perf_hint or "latency").upper())
        runner = OpenVINORunner(compiled, copy=False)
        version = package_version("openvino") or _ov().get_version()
        provider = f"AUTO ({', '.join(runner.execution_devices)})" if device == "AUTO" else device
        return Loaded(runner, self.runtime, version, provider, runner.hint, runner.static_batch)


def check_request(request: ExportRequest, has_ranges: bool) -> str | None:
    """Validate precision/ptq options; return the PTQ method (or None)."""
    ptq = request.options.get("ptq")
    if ptq is not None and ptq not in PTQ_METHODS:
        raise ConfigError(f"--ptq {ptq!r} is unknown; use one of {', '.join(PTQ_METHODS)}")
    if ptq and request.precision != "int8":
        raise ConfigError(f"--ptq {ptq} quantizes to INT8; use it with --precision int8, not {request.precision}")
    if request.precision == "int8" and not ptq and not has_ranges:
        require_int8_ranges(None, request.checkpoint, also="or pass --ptq nncf for NNCF's own PTQ")
    return ptq


def calibration_images(ckpt: dict[str, Any], meta: dict[str, Any], count: int | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Calibration images for NNCF: the recipe's calib list, else evenly spaced train images.

    The same list and number of images edgeseg's own calibration uses (edgeseg.quant.data), so
    the two INT8 artifacts differ by their quantization algorithm, not their data. Images are
    preprocessed at the artifact's input size, as the IR expects.
    """
    from edgeseg.config import recipe_from_dict
    from edgeseg.data.calib import calibration_images as recipe_calibration_images
    from edgeseg.data.preprocess import preprocess

    recipe = recipe_from_dict(ckpt["recipe"])
    norm, size = meta["normalization"], tuple(meta["input_size"])
    load, n, info = recipe_calibration_images(recipe, num_images=int(count or recipe.quant.calib_num_images))
    images = [preprocess(load(i), size, norm["mean"], norm["std"]) for i in range(n)]
    return images, {"calib_list": info["calib_list"], "num_images": len(images)}


@dataclass
class _Reference:
    """What an IR is verified against: onnxruntime's logits of the source ONNX on the artifact's images."""

    onnx_path: Path
    images: list[np.ndarray]
    logits: np.ndarray


def export_openvino(request: ExportRequest, out: Path) -> dict[str, Any]:
    """Export one OpenVINO artifact into folder `out` and verify it; return its meta."""
    from edgeseg.export.common import source_onnx, verification_images
    from edgeseg.export.prepare import load_for_export
    from edgeseg.fsutil import scratch_dir, write_json

    model, ckpt, meta = load_for_export(request)
    ptq = check_request(request, has_ranges=bool(ckpt.get("quant")))
    opts = request.options
    images, data_desc = verification_images(meta, int(opts.get("verify_images", 8)))
    int8_source = request.precision == "int8" and not ptq
    with scratch_dir(out) as tmp:  # inside the artifact's own temporary folder (atomic_dir)
        onnx_path = tmp / "model.onnx"
        source_onnx(model, onnx_path, meta=meta, int8=int8_source, dynamic_batch=request.dynamic_batch)
        ref = _Reference(onnx_path, images, onnx_reference(onnx_path, images))
        xml, lowered = _build_ir(request, ref.onnx_path, out, ckpt, meta, ptq=ptq)
        hint = opts.get("precision_hint") or precision_hint(request.precision)
        report = _verify(request, xml, ref, tmp, hint=hint, ptq=ptq, lowered=lowered)
        _check_float_layers(model, xml, report)
    write_json(out / PRECISION_REPORT, report)
    _describe_artifact(meta, request, xml, report, hint=hint, ptq=ptq, lowered=lowered, data_desc=data_desc)
    if request.precision != "int8":
        meta["quant"] = None
    return meta


def _build_ir(
    request: ExportRequest, onnx_path: Path, out: Path, ckpt: dict[str, Any], meta: dict[str, Any], *, ptq: str | None
) -> tuple[Path, int]:
    """Write the shipped IR into `out`: NNCF's PTQ of the float ONNX, else the converted ONNX (an
    INT8 one with non-negative tensors lowered to u8); record how in `meta`. Returns (IR, lowered)."""
    opts = request.options
    if ptq:
        calib, calib_info = calibration_images(ckpt, meta, opts.get("calib_images"))
        xml = nncf_quantize_ir(onnx_path, out, calib)
        meta["quant"] = {"method": "nncf", **calib_info, "qat": False}
        return xml, 0
    xml, lowered = ir_from_onnx(onnx_path, out, precision=request.precision, exact_grid=bool(opts.get("exact_grid")))
    if request.precision == "int8":  # an INT8 source ONNX (no PTQ here)
        meta["openvino_lowering"] = {"unsigned_activations": lowered, "exact_grid": bool(opts.get("exact_grid"))}
    return xml, lowered


def _verify(request: ExportRequest, xml: Path, ref: _Reference, tmp: Path, *, hint: str, ptq: str | None, lowered: int) -> dict[str, Any]:
    """Verify the shipped IR against onnxruntime (a lowered one after its signed-grid twin) and
    record what the deployed hint runs; return the precision report."""
    opts, int8 = request.options, request.precision == "int8"
    # An NNCF IR has no identical reference (its ranges are its own): it is held to edgeseg's INT8
    # gate against the FP32 model, so an NNCF artifact that lost too much is never written.
    min_agree = float(opts.get("min_agreement", INT8_AGREEMENT if int8 else FLOAT_AGREEMENT))
    fix = NNCF_FIX if ptq else None
    # Layers kept float (--keep-float/--max-drop) run in f32: _check_float_layers holds them exactly.
    fallback_ok = bool(opts.get("allow_fallback")) or bool(opts.get("float_layers"))
    # Verify at f32 execution: the check measures the conversion (weights, Q/DQ, layout), not
    # the bf16 rounding this CPU's default hint adds to the layers left in floating point.
    exact_agreement = None
    if lowered:
        # First the conversion, on the signed grid (the numbers onnxruntime computes), then the
        # shipped u8 IR, which only has to stay near it.
        (tmp / "exact").mkdir()
        exact_xml, _ = ir_from_onnx(ref.onnx_path, tmp / "exact", precision="int8", exact_grid=True)
        exact = verify_ir(exact_xml, ref.logits, ref.images, hint="f32", int8=True, allow_fallback=fallback_ok, min_agreement=min_agree)
        exact_agreement = exact["argmax_agreement"]
        min_agree = min(min_agree, LOWERED_AGREEMENT)
    report = verify_ir(xml, ref.logits, ref.images, hint="f32", int8=int8, allow_fallback=fallback_ok, min_agreement=min_agree, fix=fix)
    report["exact_grid_agreement"] = exact_agreement
    report["verified_with_hint"] = "f32"
    report["deployed_hint"] = hint
    if hint != "f32":  # also record what the deployed hint (bf16 here for FP16) runs and costs
        report["deployed"] = _deployed(xml, ref, hint=hint, int8=int8)
    return report


def _check_float_layers(model: Any, xml: Path, report: dict[str, Any]) -> None:
    """With layers kept float: exactly those convolutions are float in the IR and run f32, the rest u8/i8."""
    from edgeseg.export.mixed import plan_of
    from edgeseg.export.mixed_verify import fail
    from edgeseg.export.openvino_ir import float_layer_problems

    plan = plan_of(model)
    if plan is not None:
        fail(float_layer_problems(xml, plan, report["layers"]), f"the OpenVINO IR '{xml.name}'")


def _deployed(xml: Path, ref: _Reference, *, hint: str, int8: bool) -> dict[str, Any]:
    """Agreement and per-layer-type precision of the IR compiled with its deployed hint."""
    from edgeseg.export.common import argmax_agreement

    deployed = compile_ir(xml, hint=hint)
    summary = precision_report(deployed, hint=hint, int8=int8)["summary"]
    got = run_compiled(deployed, ref.images)
    return {"hint": hint, "argmax_agreement": argmax_agreement(got, ref.logits), "summary": summary}


def _describe_artifact(
    meta: dict[str, Any],
    request: ExportRequest,
    xml: Path,
    report: dict[str, Any],
    *,
    hint: str,
    ptq: str | None,
    lowered: int,
    data_desc: str,
) -> None:
    """Fill the artifact's meta: model file and I/O names, tools, the precision hint, verification."""
    from edgeseg.export.prepare import tool_versions

    ir = _ov().Core().read_model(str(xml))
    meta.update({
        "target": "openvino", "precision": request.precision, "model_file": MODEL_FILE,
        "input_name": ir.inputs[0].get_any_name(), "output_name": ir.outputs[0].get_any_name(),
        "tool_versions": tool_versions("torch", "onnx", "onnxruntime", "openvino", "nncf"),
        # bench reads "precision_hint" and compiles with it (OpenVINO's CPU default may be bf16).
        "precision_hint": hint, "device": "CPU",
        "verification": {
            "reference": "onnxruntime FP32 ONNX" if ptq else "onnxruntime, same ONNX" + (
                " (signed grid; the IR runs tensors after ReLU in u8)" if lowered else ""
            ), "data": data_desc,
            **{k: report[k] for k in ("argmax_agreement", "max_abs_diff", "weighted_layers", "weighted_layers_int8")},
            "fallbacks": len(report["fallbacks"]), "exact_grid_agreement": report["exact_grid_agreement"],
            "min_agreement": report["min_agreement"],
            "verified_with_hint": "f32", "deployed_hint_agreement": report.get("deployed", {}).get("argmax_agreement"),
        },
    })  # fmt: skip


TARGET = OpenVINOTarget()
