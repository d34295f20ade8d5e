"""OpenVINO IR: conversion from ONNX, the u8 lowering of INT8 activations, and verification.

The helpers the OpenVINO target (edgeseg.export.openvino) builds and checks its artifact with:
`ir_from_onnx` and `nncf_quantize_ir` write the IR, `unsigned_activations` lowers the signed
INT8 quantizers of non-negative tensors to u8, `compile_ir` compiles with a precision hint, and
`verify_ir` compares the compiled IR with onnxruntime and proves from the compiled runtime model
(`runtime_layers`, `precision_report`) that every weighted layer of an INT8 IR runs in u8/i8.
OpenVINO and NNCF are imported inside functions; this module never imports torch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import NumericalError, TargetError, missing_dependency
from edgeseg.export.common import FLOAT_AGREEMENT, argmax_agreement, gate

MODEL_FILE = "model.xml"
INT8_PRECISIONS = {"u8", "i8"}
# Layer types that carry weights: in an INT8 IR each must run in u8/i8.
WEIGHTED_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}


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

    candidates = _share_concat_ranges(model, _lowerable(model))
    for fq, top in candidates.values():
        zero, high = ops.constant(np.float32(0.0)), ops.constant(np.float32(top))
        for index, const in ((1, zero), (2, high), (3, zero), (4, high)):
            fq.input(index).replace_source_output(const.output(0))
    model.validate_nodes_and_infer_types()
    return len(candidates)


def _lowerable(model: Any) -> dict[str, tuple[Any, float]]:
    """FakeQuantize nodes of the signed symmetric scheme on non-negative activations, by name, each
    with the top of the range it can be lowered to."""
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
    return candidates


def _share_concat_ranges(model: Any, candidates: dict[str, tuple[Any, float]]) -> dict[str, tuple[Any, float]]:
    """A Concat's inputs share one scale: lowered together over their widest range, or all kept
    signed when one of them is not non-negative. Updates and returns `candidates`."""
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
    return candidates


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
    min_agreement: float | None = FLOAT_AGREEMENT,
    fix: str | None = None,
) -> dict[str, Any]:
    """Compile on CPU, compare with reference logits, and check INT8 runtime precision.

    Args:
        fix: what the error says to do when the agreement is too low (default: the conversion's).

    Raises:
        NumericalError: NaN/inf logits, or argmax agreement below `min_agreement` (None: record only).
        TargetError: an INT8 IR with weighted layers not running in u8/i8, unless allow_fallback.
    """
    compiled = compile_ir(xml, hint=hint)
    got = run_compiled(compiled, images)
    agreement = argmax_agreement(got, reference)
    report = precision_report(compiled, hint=hint, int8=int8)
    report["argmax_agreement"] = agreement
    report["max_abs_diff"] = float(np.abs(got - reference).max())
    report["min_agreement"] = min_agreement
    if not np.isfinite(got).all():
        raise NumericalError(f"OpenVINO '{xml}' produced NaN/inf logits; the IR's weights or ranges are broken: re-export it")
    if min_agreement is not None and agreement < min_agreement:
        fix = fix or (
            "a float IR this far off is a conversion bug; an INT8 one means near-tied logits flip between the two runtimes' "
            "INT8 kernels, so check the checkpoint's accuracy"
        )
        message = f"OpenVINO '{xml.name}' agrees with its reference on only {agreement:.2%} of pixels (< {min_agreement:.1%}): {fix}"
        gate(False, NumericalError(message), argmax_agreement=agreement)
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


# --- layers kept float (edgeseg.export.mixed) ------------------------------------------------------

_WEIGHT_PATH = {"Convert", "Reshape", "Unsqueeze", "Squeeze", "Transpose"}


def _int8_weights(node: Any) -> bool:
    """Weights that are INT8: an i8/u8 constant dequantized (Convert, Subtract, Multiply), or a FakeQuantize."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_output_element_type(0).get_type_name() in INT8_PRECISIONS
    if kind in ("Multiply", "Subtract"):
        return any(_int8_weights(i.get_source_output().get_node()) for i in node.inputs())
    return kind in _WEIGHT_PATH and _int8_weights(node.input(0).get_source_output().get_node())


def _int8_input(node: Any) -> bool:
    """An activation that is INT8: a FakeQuantize, moved by a pass-through op or a Concat of them."""
    kind = node.get_type_name()
    if kind == "Concat":
        return all(_int8_input(i.get_source_output().get_node()) for i in node.inputs())
    if kind in _PASS_THROUGH:
        return _int8_input(node.input(0).get_source_output().get_node())
    return kind == "FakeQuantize"


def float_layer_problems(xml: Path, plan: Any, runtime: list[dict[str, str]] | None = None) -> list[str]:
    """An INT8 IR with layers kept float against its plan (edgeseg.export.mixed), read back twice.

    In the IR: each convolution's weights (an i8 constant with its dequantization, or a
    FakeQuantize) and input (a FakeQuantize, or a Concat of them) are INT8 exactly where the plan
    says, and no FakeQuantize quantizes an activation it keeps float. In the compiled model
    (`runtime`: runtime_layers at the f32 hint, compiled here when None): exactly the convolutions
    the plan has INT8 in weights and input run in u8/i8.
    """
    from edgeseg.export.mixed_verify import graph_problems, module_of

    model = _ov().Core().read_model(str(xml))
    convs: dict[str, tuple[bool, bool]] = {}
    quantized = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize" and op.input(0).get_source_output().get_node().get_type_name() != "Constant":
            quantized.append(op.get_friendly_name())
        elif kind in ("Convolution", "GroupConvolution"):
            source = [op.input(i).get_source_output().get_node() for i in (0, 1)]
            convs[op.get_friendly_name().removesuffix("/WithoutBiases")] = (_int8_weights(source[1]), _int8_input(source[0]))
    problems = graph_problems(convs, quantized, plan)
    for row in runtime if runtime is not None else runtime_layers(compile_ir(xml, hint="f32")):
        if row["type"] not in WEIGHTED_LAYERS:
            continue
        name = module_of(row["name"].removesuffix("/WithoutBiases"), plan.convs)
        runs = row["runtime_precision"] in INT8_PRECISIONS
        if name is None:
            problems.append(f"runtime layer '{row['name']}' matches no convolution of the model")
        elif runs != all(plan.convs[name]):
            problems.append(f"conv '{name}' runs in {row['runtime_precision']} on OpenVINO, expected {'float' if runs else 'u8/i8'}")
    return problems
