"""OpenVINO target: IR (.xml/.bin) from the ONNX of the same checkpoint, verified on this CPU.

FP32 converts the float ONNX with no weight compression; FP16 compresses the weights to FP16
(`save_model(compress_to_fp16=True)`); INT8 converts the Q/DQ ONNX of a calibrated or QAT
checkpoint, so OpenVINO runs the ranges edgeseg trained. `ptq="nncf"` instead quantizes the
float IR with NNCF's own post-training quantization, as a point of comparison.

Every export is verified before it is declared written: the IR is compiled on the CPU and
compared with onnxruntime on images of the artifact's data set (argmax agreement), and the
compiled runtime model is read back so every convolution of an INT8 IR is proven to run in
u8/i8; fallbacks fail the export unless `allow_fallback`.

The CPU's default inference precision on a CPU with AVX-512 BF16 or AMX is bf16, so the FP32
and INT8 artifacts pin INFERENCE_PRECISION_HINT to f32 (INT8 layers run in INT8 either way);
the FP16 artifact uses f16 where the CPU has it and the CPU's reduced default (bf16) otherwise.
The hint is recorded in meta.json ("precision_hint") and used again by `load` and bench.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, NumericalError, TargetError, missing_dependency
from edgeseg.export.base import ExportRequest, Loaded, package_version
from edgeseg.export.common import onnx_reference, require_int8_ranges

log = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
PRECISION_REPORT = "precision_report.json"
INT8_PRECISIONS = {"u8", "i8"}
# Layer types that carry weights: in an INT8 IR each must run in u8/i8.
WEIGHTED_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}
DEFAULT_AGREEMENT = 0.995
# Two INT8 engines (onnxruntime's and OpenVINO's) accumulate and requantize differently, so
# near-tied logits flip on a few more pixels than a float conversion allows. Measured on the
# signed grid: CamVid val, QAT model 99.48% (OS32), PTQ max 99.34% (OS16); the tiny smoke model,
# whose logits are close together, 98.9-99.0%. A conversion bug (a wrong scale, a lost Q/DQ)
# drops far below this.
INT8_AGREEMENT = 0.98
# The shipped INT8 IR runs non-negative tensors on a finer u8 grid than the signed ONNX it is
# compared with, so a few more near-ties flip (measured 99.1-99.5% on CamVid, 98.7-98.9% on the
# smoke model). The conversion itself is checked at INT8_AGREEMENT on the signed grid first.
LOWERED_AGREEMENT = 0.97
PTQ_METHODS = ("nncf",)


def _ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise missing_dependency("openvino", "openvino") from None
    return openvino


def ir_from_onnx(onnx_path: Path, out_dir: Path, *, precision: str, exact_grid: bool = False) -> tuple[Path, int]:
    """Convert an ONNX file to IR in out_dir/model.xml; FP16 compresses weights, others do not.

    An INT8 model's quantizers of non-negative tensors are lowered to u8 (see
    `unsigned_activations`) unless `exact_grid`. Returns the IR path and the number lowered.
    """
    ov = _ov()
    model = ov.convert_model(str(onnx_path))
    lowered = unsigned_activations(model) if precision == "int8" and not exact_grid else 0
    xml = Path(out_dir) / MODEL_FILE
    ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
    return xml, lowered


# Ops whose output is non-negative when their first input is: bilinear/nearest resizing is a
# convex combination of its inputs; pooling and layout ops move values.
_SIGN_PRESERVING = {"Interpolate", "MaxPool", "AvgPool", "Reshape", "Squeeze", "Unsqueeze", "Broadcast", "Transpose"}
# Ops between a quantizer and the Concat it feeds (the image-pooling branch broadcasts first).
_PASS_THROUGH = {"Broadcast", "Reshape", "Squeeze", "Unsqueeze"}


def _non_negative(node: Any) -> bool:
    kind = node.get_type_name()
    if kind == "Relu":
        return True
    if kind == "Clamp":
        return float(node.get_min()) >= 0.0
    if kind == "Interpolate" and str(node.get_attributes().get("mode", "")).startswith("cubic"):
        return False  # cubic weights are negative in places
    if kind in _SIGN_PRESERVING:
        return _non_negative(node.input(0).get_source_output().get_node())
    return False


def _scalar_input(node: Any, index: int) -> float | None:
    src = node.input(index).get_source_output().get_node()
    if src.get_type_name() != "Constant":
        return None
    data = src.get_data()
    return float(data.ravel()[0]) if data.size == 1 else None


def unsigned_activations(model: Any) -> int:
    """Lower the signed INT8 quantizers of non-negative tensors to u8 over the same range.

    edgeseg's INT8 model is signed and symmetric, the scheme TensorRT requires, so a tensor after
    ReLU/ReLU6 uses only the codes 0..127 of [-128, 127]. OpenVINO's CPU plugin runs u8
    activations natively, and NNCF gives such tensors the full 0..255: a FakeQuantize of range
    [0, amax] (levels 256, zero point 0) runs as u8 and makes the clamp of a preceding ReLU6
    redundant (OpenVINO drops it, no post-op is left in the convolution). This keeps every
    calibrated or QAT-trained range; only the step inside it halves (amax/255 instead of amax/127).
    On CamVid val the mIoU moved by at most 0.06 against the signed grid; `exact_grid` keeps the
    signed grid bit for bit at ~5% more latency.

    Quantizers feeding a Concat share one scale; they are lowered together or not at all.
    Returns the number of FakeQuantize nodes lowered.
    """
    from openvino import opset13 as ops

    candidates: dict[str, tuple[Any, float]] = {}
    fqs = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    for fq in fqs:
        source = fq.input(0).get_source_output().get_node()
        if source.get_type_name() == "Constant" or int(fq.get_levels()) != 256 or not _non_negative(source):
            continue
        lo, hi, out_lo, out_hi = (_scalar_input(fq, i) for i in range(1, 5))
        if None in (lo, hi, out_lo, out_hi) or lo != out_lo or hi != out_hi or not hi > 0:  # type: ignore[operator]
            continue
        if abs(lo + hi * 128.0 / 127.0) > 1e-5 * hi:  # type: ignore[operator]  # not the signed symmetric scheme
            continue
        top = hi
        if source.get_type_name() == "Clamp":  # values above the clamp never occur: spend the codes below it
            top = min(hi, float(source.get_max()))  # type: ignore[type-var]
        candidates[fq.get_friendly_name()] = (fq, float(top))
    # A Concat's inputs share one scale: lowered together over their widest range, or all kept
    # signed when one of them is not non-negative.
    for concat in (op for op in model.get_ordered_ops() if op.get_type_name() == "Concat"):
        feeding = []
        for inp in concat.inputs():
            node = inp.get_source_output().get_node()
            while node.get_type_name() in _PASS_THROUGH:
                node = node.input(0).get_source_output().get_node()
            feeding.append(node.get_friendly_name() if node.get_type_name() == "FakeQuantize" else None)
        names = [n for n in feeding if n is not None]
        if any(n not in candidates for n in names):
            for n in names:
                candidates.pop(n, None)
        elif names:
            top = max(candidates[n][1] for n in names)
            for n in names:
                candidates[n] = (candidates[n][0], top)
    for fq, top in candidates.values():
        zero, high = ops.constant(np.float32(0.0)), ops.constant(np.float32(top))
        for index, const in ((1, zero), (2, high), (3, zero), (4, high)):
            fq.input(index).replace_source_output(const.output(0))
    model.validate_nodes_and_infer_types()
    return len(candidates)


def precision_hint(precision: str, device: str = "CPU") -> str:
    """The INFERENCE_PRECISION_HINT an artifact of `precision` runs with on `device`."""
    if precision in ("fp32", "int8"):
        return "f32"
    core = _ov().Core()
    caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
    if "FP16" in caps:
        return "f16"
    return str(core.get_property(device, "INFERENCE_PRECISION_HINT").get_type_name())


def compile_ir(xml: Path, *, hint: str | None, device: str = "CPU", threads: int | None = None, performance: str | None = None) -> Any:
    """Compile an IR with a precision hint (None: the runtime's default), thread count and
    performance mode (bench: LATENCY)."""
    ov = _ov()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    if performance:
        config["PERFORMANCE_HINT"] = performance
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return ov.Core().compile_model(str(xml), device, config)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TargetError(f"OpenVINO cannot compile '{xml}' on {device} ({first}); check the device name and the IR") from None


def runtime_layers(compiled: Any) -> list[dict[str, str]]:
    """Per-layer runtime info of a compiled model: type, runtime/output precision, kernel."""
    rows = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def get(key: str, info: Any = info) -> str:
            return info[key].astype(str) if key in info else ""

        rows.append(
            {
                "name": op.get_friendly_name(),
                "type": get("layerType"),
                "runtime_precision": get("runtimePrecision"),
                "output_precisions": get("outputPrecisions"),
                "primitive": get("primitiveType"),
                "original": get("originalLayersNames"),
            }
        )
    return rows


def precision_report(compiled: Any, *, hint: str, int8: bool) -> dict[str, Any]:
    """Summarise the runtime precision per layer type; list weighted layers not in u8/i8."""
    layers = runtime_layers(compiled)
    summary: dict[str, Counter[str]] = {}
    for row in layers:
        if row["type"] in ("Input", "Output", "Const"):
            continue
        summary.setdefault(row["type"], Counter())[row["runtime_precision"]] += 1
    fallbacks = [r for r in layers if int8 and r["type"] in WEIGHTED_LAYERS and r["runtime_precision"] not in INT8_PRECISIONS]
    weighted = [r for r in layers if r["type"] in WEIGHTED_LAYERS]
    return {
        "inference_precision_hint": hint,
        "weighted_layers": len(weighted),
        "weighted_layers_int8": sum(r["runtime_precision"] in INT8_PRECISIONS for r in weighted),
        "summary": {t: dict(c) for t, c in sorted(summary.items())},
        "fallbacks": [{k: r[k] for k in ("name", "type", "runtime_precision", "primitive", "original")} for r in fallbacks],
        "layers": layers,
    }


def run_compiled(compiled: Any, images: list[np.ndarray]) -> np.ndarray:
    req = compiled.create_infer_request()
    outs = []
    for x in images:
        req.infer({0: x})
        outs.append(np.array(req.get_output_tensor(0).data, dtype=np.float32, copy=True))
    return np.concatenate(outs)


def verify_ir(
    xml: Path,
    reference: np.ndarray,
    images: list[np.ndarray],
    *,
    hint: str,
    int8: bool,
    allow_fallback: bool = False,
    min_agreement: float | None = DEFAULT_AGREEMENT,
) -> dict[str, Any]:
    """Compile on CPU, compare with reference logits, and check INT8 runtime precision.

    Raises:
        NumericalError: argmax agreement below `min_agreement` (None: record only).
        TargetError: an INT8 IR with weighted layers not running in u8/i8, unless allow_fallback.
    """
    compiled = compile_ir(xml, hint=hint)
    got = run_compiled(compiled, images)
    from edgeseg.export.common import argmax_agreement

    agreement = argmax_agreement(got, reference)
    report = precision_report(compiled, hint=hint, int8=int8)
    report["argmax_agreement"] = agreement
    report["max_abs_diff"] = float(np.abs(got - reference).max())
    if min_agreement is not None and agreement < min_agreement:
        raise NumericalError(
            f"OpenVINO '{xml}' agrees with onnxruntime on only {agreement:.2%} of pixels (< {min_agreement:.1%}): a float IR this far off is a "
            "conversion bug; an INT8 one means near-tied logits flip between the two runtimes' INT8 kernels, so check the checkpoint's accuracy"
        )
    if report["fallbacks"] and not allow_fallback:
        names = ", ".join(f"{f['name']} ({f['runtime_precision']})" for f in report["fallbacks"][:4])
        more = f" and {len(report['fallbacks']) - 4} more" if len(report["fallbacks"]) > 4 else ""
        raise TargetError(
            f"{len(report['fallbacks'])} weighted layers do not run in INT8 on OpenVINO: {names}{more}; fix the Q/DQ placement or pass --allow-fallback"
        )
    return report


def nncf_quantize_ir(fp32_onnx: Path, out_dir: Path, calibration: list[np.ndarray]) -> Path:
    """NNCF post-training quantization of the float model (symmetric 'performance' preset)."""
    ov = _ov()
    try:
        import nncf
    except ImportError:
        raise missing_dependency("nncf", "nncf") from None
    model = ov.convert_model(str(fp32_onnx))
    dataset = nncf.Dataset(calibration)
    quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calibration))
    xml = Path(out_dir) / MODEL_FILE
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return xml


class OpenVINORunner:
    """A compiled IR with one infer request: `run(x)` maps float32 NCHW to float32 logits.

    With `copy=False` (bench), `run` returns a view of the request's output tensor, valid until
    the next call, so timing measures inference and not a copy.
    """

    def __init__(self, compiled: Any, *, copy: bool = True) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.copy = copy
        self.hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        shape = compiled.inputs[0].get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        out = self.request.get_output_tensor(0).data
        return np.array(out, dtype=np.float32, copy=True) if self.copy else out


class OpenVINOTarget:
    """The Target protocol for OpenVINO (see edgeseg.export.base)."""

    name = "openvino"
    runtime = "openvino"
    runtime_label = "OpenVINO"
    extra = "openvino"
    precisions = ("fp32", "fp16", "int8")
    variants: tuple[tuple[str, str | None], ...] = (("fp32", None), ("fp16", None), ("int8", None), ("int8", "nncf"))
    precision_hints = ("f32", "bf16", "f16")

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

    def load(self, artifact: Path, meta: dict[str, Any], *, threads: int | None = None, precision_hint: str | None = None) -> Loaded:
        """Compile with the LATENCY hint; precision: `precision_hint`, else meta.json's, else f32 for
        an FP32 artifact (OpenVINO would otherwise run it in bf16 on CPUs that have it), else the
        runtime's default, read back and recorded."""
        hint = precision_hint or meta.get("precision_hint") or ("f32" if meta["precision"] == "fp32" else None)
        device = meta.get("device", "CPU")
        compiled = compile_ir(Path(artifact) / meta["model_file"], hint=hint, device=device, threads=threads, performance="LATENCY")
        runner = OpenVINORunner(compiled, copy=False)
        version = package_version("openvino") or _ov().get_version()
        return Loaded(runner, self.runtime, version, device, runner.hint, runner.static_batch)


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
    from edgeseg.data.calib import read_calib_list
    from edgeseg.data.dataset import open_split
    from edgeseg.data.io import read_image
    from edgeseg.data.preprocess import preprocess

    recipe = recipe_from_dict(ckpt["recipe"])
    n = int(count or recipe.quant.calib_num_images)
    norm, size = meta["normalization"], tuple(meta["input_size"])
    if recipe.quant.calib_list:
        paths = read_calib_list(recipe.quant.calib_list, recipe.data.root, n)
        images = [preprocess(read_image(p), size, norm["mean"], norm["std"]) for p in paths]
        return images, {"calib_list": recipe.quant.calib_list, "num_images": len(images)}
    source = open_split(recipe, recipe.data.train_split)
    picks = np.linspace(0, len(source) - 1, min(n, len(source))).round().astype(int).tolist()
    images = [preprocess(source.load(i)[0], size, norm["mean"], norm["std"]) for i in picks]
    return images, {"calib_list": f"{recipe.data.format}:{recipe.data.train_split}", "num_images": len(images)}


def export_openvino(request: ExportRequest, out: Path) -> dict[str, Any]:
    """Export one OpenVINO artifact into folder `out` and verify it; return its meta."""
    from edgeseg.export.common import argmax_agreement, source_onnx, verification_images
    from edgeseg.export.prepare import load_for_export, tool_versions
    from edgeseg.fsutil import scratch_dir, write_json

    model, ckpt, meta = load_for_export(request)
    ptq = check_request(request, has_ranges=bool(ckpt.get("quant")))
    opts = request.options
    images, data_desc = verification_images(meta, int(opts.get("verify_images", 8)))
    int8_source = request.precision == "int8" and not ptq
    with scratch_dir(out) as tmp:  # inside the artifact's own temporary folder (atomic_dir)
        onnx_path = tmp / "model.onnx"
        source_onnx(model, onnx_path, meta=meta, int8=int8_source, dynamic_batch=request.dynamic_batch)
        reference = onnx_reference(onnx_path, images)
        lowered = 0
        if ptq:
            calib, calib_info = calibration_images(ckpt, meta, opts.get("calib_images"))
            xml = nncf_quantize_ir(onnx_path, out, calib)
            meta["quant"] = {"method": "nncf", **calib_info, "qat": False}
        else:
            xml, lowered = ir_from_onnx(onnx_path, out, precision=request.precision, exact_grid=bool(opts.get("exact_grid")))
            if int8_source:
                meta["openvino_lowering"] = {"unsigned_activations": lowered, "exact_grid": bool(opts.get("exact_grid"))}
        hint = opts.get("precision_hint") or precision_hint(request.precision)
        # An NNCF IR has no identical reference (its ranges are its own): record its agreement with FP32.
        default = INT8_AGREEMENT if int8_source else DEFAULT_AGREEMENT
        min_agree = None if ptq else float(opts.get("min_agreement", default))
        fallback_ok = bool(opts.get("allow_fallback"))
        # Verify at f32 execution: the check measures the conversion (weights, Q/DQ, layout), not
        # the bf16 rounding this CPU's default hint adds to the layers left in floating point.
        exact_agreement = None
        if lowered and min_agree is not None:
            # First the conversion, on the signed grid (the numbers onnxruntime computes), then the
            # shipped u8 IR, which only has to stay near it.
            (tmp / "exact").mkdir()
            exact_xml, _ = ir_from_onnx(onnx_path, tmp / "exact", precision="int8", exact_grid=True)
            exact = verify_ir(exact_xml, reference, images, hint="f32", int8=True, allow_fallback=fallback_ok, min_agreement=min_agree)
            exact_agreement = exact["argmax_agreement"]
            min_agree = min(min_agree, LOWERED_AGREEMENT)
        report = verify_ir(
            xml, reference, images, hint="f32", int8=request.precision == "int8", allow_fallback=fallback_ok, min_agreement=min_agree
        )
        report["exact_grid_agreement"] = exact_agreement
        report["verified_with_hint"] = "f32"
        report["deployed_hint"] = hint
        if hint != "f32":  # also record what the deployed hint (bf16 here for FP16) runs and costs
            deployed = compile_ir(xml, hint=hint)
            summary = precision_report(deployed, hint=hint, int8=request.precision == "int8")["summary"]
            got = run_compiled(deployed, images)
            report["deployed"] = {"hint": hint, "argmax_agreement": argmax_agreement(got, reference), "summary": summary}
    write_json(out / PRECISION_REPORT, report)
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
            "fallbacks": len(report["fallbacks"]), "exact_grid_agreement": exact_agreement,
            "verified_with_hint": "f32", "deployed_hint_agreement": report.get("deployed", {}).get("argmax_agreement"),
        },
    })  # fmt: skip
    if request.precision != "int8":
        meta["quant"] = None
    return meta


TARGET = OpenVINOTarget()
