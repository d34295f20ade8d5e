"""The shared ONNX path: export (FP32 or Q/DQ INT8) and its graph checks; every target starts here.

The "onnx" target itself (onnxruntime runner, meta) is edgeseg.export.onnx; this module is its
export side and the other targets' source (torch is imported here, so targets import it lazily).

Exporter: torch.onnx's TorchScript-based exporter (`dynamo=False`). Both torch 2.14 exporters
turn the fake quantizers into clean QuantizeLinear/DequantizeLinear pairs (int8 zero points,
axis 0 for weights), but the torch.export-based one cannot emit opset 17 for these graphs (its
down-converter fails on ReduceMax and leaves opset 18) and took 2-3x longer here. Should a
later torch drop the TorchScript exporter, the torch.export-based one is used at opset >= 18.
onnxsim then folds the weight-scale arithmetic into constants; the graph is checked after it so
every Conv weight still sits behind a per-channel DequantizeLinear (TensorRT needs it).
"""

from __future__ import annotations

import collections
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg.errors import CheckpointError, NumericalError, TargetError, missing_dependency
from edgeseg.export.base import ExportRequest
from edgeseg.fsutil import scratch_dir, write_bytes

log = logging.getLogger(__name__)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
VERIFY_IMAGES = 16  # real images of the artifact's data set every export is checked on, beside one noise input
FP32_TOLERANCE = 1e-4  # max |onnxruntime - torch| of FP32 logits, relative to max(1, max |logit|)


def _import(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_dependency(module, "onnx") from None


def _torch_export(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> int:
    """Export to `path`; returns the opset written."""
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
            return opset
        except TypeError:  # a torch without the TorchScript exporter
            opset = max(opset, 18)
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                external_data=False,
            )
            return opset


def constants(graph: Any) -> dict[str, np.ndarray]:
    """Every constant tensor of a graph (initializers and Constant nodes) by output name."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def check_qdq(proto: Any, plan: Any = None) -> list[str]:
    """Graph rules of a Q/DQ INT8 model; returns the violations (empty when it is sound).

    Every Conv weight comes from a DequantizeLinear with axis 0, a per-output-channel scale and
    int8 zero points (of a QuantizeLinear of a float constant, or of an int8 constant); every
    Conv input comes from a DequantizeLinear, or from a Concat (or Expand) of DequantizeLinear
    outputs that share one scale; every zero point is int8 and 0.

    With a `plan` (edgeseg.export.mixed: layers kept float), each Conv is held to the plan
    instead: float weights (a float constant) and a float input exactly where it says, the rules
    above everywhere else, and no QuantizeLinear on an activation it keeps float.
    """
    graph = proto.graph
    const = constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    problems: list[str] = []
    states: dict[str, tuple[bool, bool]] = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = const.get(node.input[2]) if len(node.input) > 2 else None
            if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                problems.append(f"{node.op_type} '{node.name}' has a zero point that is not a constant int8 0")
        if node.op_type != "Conv":
            continue
        weight = const.get(node.input[1])
        float_weight = plan is not None and weight is not None and np.issubdtype(weight.dtype, np.floating)  # FP32, or FP16 (Jetson)
        channels = None if weight is not None else _dq_channels(producer.get(node.input[1]), const, producer)
        if channels is None and not float_weight:
            problems.append(f"Conv '{node.name}' weight is not behind a per-channel (axis 0) DequantizeLinear")
        scales = _dq_scales(node.input[0], const, producer)
        if not scales and plan is None:
            problems.append(f"Conv '{node.name}' input is not behind a DequantizeLinear")
        elif len(set(scales)) > 1:
            problems.append(f"Conv '{node.name}' input is a Concat of tensors with different scales {sorted(set(scales))[:3]}")
        states[node.name] = (channels is not None, bool(scales))
    if plan is not None:
        from edgeseg.export.mixed_verify import graph_problems

        quantized = [n.name for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in const]
        problems += graph_problems(states, quantized, plan)
    return problems


def _dq_scales(name: str, const: dict[str, np.ndarray], producer: dict[str, Any]) -> list[float]:
    """Scales of the DequantizeLinear(s) a tensor comes from, through Concat and Expand; [] if any path has none.

    A Concat whose inputs are all dequantized with one scale is an INT8 concat for TensorRT
    and OpenVINO, so a Conv after it is fed INT8.
    """
    node = producer.get(name)
    if node is None:
        return []
    if node.op_type == "DequantizeLinear":
        scale = const.get(node.input[1])
        return [float(scale)] if scale is not None and scale.size == 1 else []
    if node.op_type == "Expand":
        return _dq_scales(node.input[0], const, producer)
    if node.op_type == "Concat":
        scales = [_dq_scales(i, const, producer) for i in node.input]
        return [v for s in scales for v in s] if all(scales) else []
    return []


def _dq_channels(dq: Any, const: dict[str, np.ndarray], producer: dict[str, Any]) -> int | None:
    """Number of channels of a weight DequantizeLinear with axis 0, else None."""
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    scale = const.get(dq.input[1])
    if axis != 0 or scale is None or scale.ndim != 1:
        return None
    src = producer.get(dq.input[0])
    if src is not None and src.op_type == "QuantizeLinear":
        weight = const.get(src.input[0])
        ok = weight is not None and np.issubdtype(weight.dtype, np.floating)
    else:
        weight = const.get(dq.input[0])
        ok = weight is not None and weight.dtype == np.int8
    return int(scale.shape[0]) if ok and weight is not None and weight.shape[0] == scale.shape[0] else None


def _simplify(proto: Any, quantized: bool, plan: Any = None) -> tuple[Any, bool]:
    onnxsim = _import("onnxsim")
    try:
        simple, ok = onnxsim.simplify(proto)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises many types; the unsimplified graph is valid
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", exc)
        return proto, False
    if not ok or (quantized and check_qdq(simple, plan)):
        log.warning("onnxsim output failed its check; keeping the unsimplified graph")
        return proto, False
    return simple, True


def _reference(model: torch.nn.Module, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *size, generator=g)
    with torch.no_grad():
        y = model(x)
    return x.numpy(), y.float().numpy()


def _real_pairs(
    model: torch.nn.Module, meta: dict[str, Any], size: tuple[int, int], count: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(image, torch logits) for `count` images of the data set meta names (none when it names none)."""
    if not {"data", "normalization"} <= meta.keys():
        return [], ""
    from edgeseg.export.common import verification_images

    images, desc = verification_images({**meta, "input_size": list(size)}, count)
    with torch.no_grad():
        return [(x, model(torch.from_numpy(x)).float().numpy()) for x in images], desc


def _compare(
    proto_bytes: bytes, noise: tuple[np.ndarray, np.ndarray], real: list[tuple[np.ndarray, np.ndarray]], quantized: bool
) -> dict[str, Any]:
    """onnxruntime against torch on the noise input and the real images: FP32 logits within
    FP32_TOLERANCE of the logit scale; INT8 (torch's fake-quant model is the reference) argmax
    agreement on the real images at INT8_AGREEMENT."""
    from edgeseg.export.common import INT8_AGREEMENT, gate, onnx_session

    sess = onnx_session(proto_bytes)
    diff, same, total, tol = 0.0, 0, 0, 0.0
    for k, (x, ref) in enumerate([noise, *real]):
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if not np.all(np.isfinite(out)):
            raise NumericalError(
                "onnxruntime produced NaN/inf logits for the exported model; the checkpoint's weights or ranges are broken"
            )
        diff = max(diff, float(np.abs(out - ref).max()))
        tol = max(tol, FP32_TOLERANCE * max(1.0, float(np.abs(ref).max())))
        if k > 0 or not real:  # agreement on the real images (on the noise input only when there are none)
            same += int((out.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    report: dict[str, Any] = {"max_abs_diff": diff, "argmax_agreement": same / max(total, 1), "verify_images": len(real)}
    if not quantized:
        gate(
            diff <= tol,
            NumericalError(f"FP32 ONNX differs from PyTorch by {diff:.3g} (> {tol:.3g}); report this with the checkpoint"),
            max_abs_diff=diff,
        )
    elif real:
        agreement = report["argmax_agreement"]
        gate(
            agreement >= INT8_AGREEMENT,
            NumericalError(
                f"the INT8 ONNX agrees with PyTorch's fake-quant model on {agreement:.2%} of pixels (< {INT8_AGREEMENT:.0%}) "
                f"of {len(real)} images; recalibrate, or report this with the checkpoint"
            ),
            argmax_agreement=agreement,
        )
    return report


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    *,
    input_size: tuple[int, int],
    meta: dict[str, Any],
    opset: int = 17,
    dynamic_batch: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Export a float or fake-quantized model to ONNX, simplify, check and write it atomically.

    Args:
        model: eval-mode model (a DeepLab, float or from edgeseg.quant.quantize).
        path: the .onnx file to write.
        input_size: (H, W) of the static input.
        meta: stored as metadata_props (values JSON-encoded unless strings).
        opset: ONNX opset (17 or newer).
        dynamic_batch: make the batch dimension dynamic.
        check: run onnx.checker and compare one onnxruntime run with PyTorch (NaN/inf logits:
            NumericalError; FP32: max abs diff within FP32_TOLERANCE of the logit scale, else
            NumericalError; INT8: argmax agreement reported).

    Returns:
        A report: path, opset, simplified, nodes (count per op), qdq_problems, max_abs_diff,
        argmax_agreement, size_bytes and seconds per step.
    """
    from edgeseg.export.mixed import plan_of
    from edgeseg.quant.quantize import is_quantized, quantizers, uncalibrated

    onnx = _import("onnx")
    quantized = is_quantized(model) and any(q.mode == "quant" for _, q in quantizers(model))
    plan = plan_of(model) if quantized else None  # layers kept float (edgeseg.export.mixed)
    if quantized and uncalibrated(model):
        raise CheckpointError(f"quantizer '{uncalibrated(model)[0]}' has no range; run 'edgeseg calibrate' on the FP32 checkpoint")
    model.eval()
    if hasattr(model, "set_input_size"):
        model.set_input_size(input_size)
    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    x, ref = _reference(model, input_size)
    with scratch_dir(Path(path).parent) as tmp:
        opset = _torch_export(model, torch.from_numpy(x), tmp / "model.onnx", opset, dynamic_batch)
        proto = onnx.load(str(tmp / "model.onnx"))
    seconds["export"] = time.perf_counter() - tick
    tick = time.perf_counter()
    proto, simplified = _simplify(proto, quantized, plan)
    seconds["simplify"] = time.perf_counter() - tick
    onnx.helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    problems = check_qdq(proto, plan) if quantized else []
    if problems and plan is not None:
        from edgeseg.export.mixed_verify import fail

        fail(problems, "the INT8 ONNX")
    if problems:
        raise NumericalError(f"the INT8 ONNX breaks the Q/DQ rules: {problems[0]} ({len(problems)} problems)")
    data = proto.SerializeToString()
    report: dict[str, Any] = {"path": str(path), "opset": opset, "precision": "int8" if quantized else "fp32", "simplified": simplified}
    if check:
        tick = time.perf_counter()
        onnx.checker.check_model(proto, full_check=True)
        real, desc = _real_pairs(model, meta, input_size, VERIFY_IMAGES)
        report.update(_compare(data, (x, ref), real, quantized), verify_data=desc or "one seeded noise input")
        seconds["check"] = time.perf_counter() - tick
    write_bytes(path, data)
    nodes = collections.Counter(n.op_type for n in proto.graph.node if n.op_type != "Constant")
    report.update({"nodes": dict(sorted(nodes.items())), "qdq_problems": problems, "size_bytes": len(data), "seconds": seconds})
    if plan is not None:
        report["float_layers_verified"] = {"layers": len(plan.layers), "float_convs": len(plan.float_convs), "convs": len(plan.convs)}
    return report


def prepare_model(request: ExportRequest) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """load_for_export, then the model of the asked precision: (model, ckpt, meta).

    FP32 from a quantized checkpoint exports its (BN-folded) float weights with quantization
    off. INT8 needs a checkpoint with ranges (from `edgeseg calibrate` or QAT).

    Raises:
        CheckpointError: INT8 asked of a checkpoint without ranges.
        TargetError: a precision other than fp32 or int8.
    """
    from edgeseg.export.common import require_int8_ranges
    from edgeseg.export.prepare import load_for_export
    from edgeseg.quant.quantize import is_quantized, set_quant_enabled

    if request.precision not in ("fp32", "int8"):
        raise TargetError(f"--precision {request.precision} is not supported by ONNX export; use fp32 or int8")
    model, ckpt, meta = load_for_export(request)
    if request.precision == "int8":
        require_int8_ranges(model, request.checkpoint)
    if is_quantized(model):
        set_quant_enabled(model, request.precision == "int8")
    meta["precision"] = request.precision
    if request.precision == "fp32":
        meta["quant"] = None
    return model, ckpt, meta
