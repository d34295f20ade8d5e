"""TensorRT preflight: static checks of an ONNX model before it goes to a Jetson.

TensorRT cannot run on this machine, so the Jetson bundle is made right by construction and
checked here against what TensorRT documents: the opset range and supported-operator matrix of
its ONNX parser, its explicit-quantization (Q/DQ) rules, static shapes, int64 weights, and the
DLA restrictions when a DLA core is asked for. Each finding is one line naming the node and the
rule; errors stop an export, warnings (a layer that will fall back from DLA to the GPU) do not.

The operator and graph rules live in edgeseg.export.preflight_graph; this module holds the
Q/DQ and DLA rules and `check_onnx`, which runs them all.

Sources (kept as data below; the operator matrix's in preflight_graph):
- TensorRT "DLA Supported Layers and Restrictions" (Jetson/DriveOS DLA), and "Working with DLA"
  for 11.x: DLA returns in 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+; 10.7 is the last 10.x
  release with DLA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import CheckpointError, ConfigError
from edgeseg.export.preflight_graph import (
    TRT_VERSIONS,
    Graph,
    Violation,
    check_int64,
    check_ops,
    check_opset,
    check_shapes,
    is_constant,
    load_model,
    node_name,
)

__all__ = ["CheckInput", "Violation", "check_input", "check_onnx"]

# DLA (Jetson/DriveOS): ONNX ops whose TensorRT layer DLA can run, and the numeric limits.
DLA_OPS = frozenset(
    """
Conv ConvTranspose Gemm Relu Sigmoid Tanh Clip LeakyRelu PRelu Add Sub Mul Max Min Div Pow Equal Greater
Less Concat MaxPool AveragePool GlobalAveragePool GlobalMaxPool LRN BatchNormalization Resize Softmax
Reshape Transpose Flatten Squeeze Unsqueeze Slice ReduceMax Abs Sin Cos Atan QuantizeLinear
DequantizeLinear Identity Constant
""".split()
)
DLA_MAX_BATCH = 4096
DLA_MAX_DIM = 8192
DLA_CONV = {"kernel": (1, 32), "stride": (1, 8), "dilation": (1, 32), "pad": (0, 31), "channels": (1, 8192)}
DLA_POOL = {"window": (1, 8), "stride": (1, 16), "pad": (0, 7)}
DLA_RESIZE_SCALE = (1, 32)


def check_trt_version(major: int) -> int:
    """A TensorRT major version edgeseg has rules for (10 or 11); ConfigError naming --trt-version otherwise."""
    if major not in TRT_VERSIONS:
        raise ConfigError(f"--trt-version {major} is not supported; use 10 or 11")
    return major


def check_onnx(
    path: str | Path | Any, target: str = "jetson", *, trt_version: int = 10, dla: int | None = None, shapes: dict[str, Any] | None = None
) -> list[Violation]:
    """Check an ONNX model against TensorRT's documented rules.

    Args:
        path: an .onnx file (or an onnx.ModelProto).
        target: only "jetson" (TensorRT) has rules here.
        trt_version: TensorRT major version, 10 or 11.
        dla: DLA core the engine will use, or None for GPU only.
        shapes: optimisation profile per input name ({"min", "opt", "max"} shapes); needed when
            an input has dynamic dimensions.

    Returns:
        Violations, errors first. An empty list means the model passes.
    """
    if target != "jetson":
        raise ConfigError(f"preflight target '{target}' has no rules; use --target jetson")
    check_trt_version(trt_version)
    model = load_model(path)
    g = Graph(model)
    out = check_opset(model, trt_version) + check_ops(g, trt_version) + _check_qdq(g) + check_shapes(g, shapes) + check_int64(g)
    out += _check_io(g)
    if dla is not None:
        out += _check_dla(g, trt_version, dla, shapes)
    return sorted(out, key=lambda v: v.severity != "error")


@dataclass(frozen=True)
class CheckInput:
    """What `edgeseg check` checks: the ONNX file and the TensorRT settings its engine is built with."""

    onnx: Path
    trt_version: int
    dla: int | None
    shapes: dict[str, Any] | None = None


def check_input(path: str | Path, *, trt_version: int | None = None, dla: int | None = None) -> CheckInput:
    """Resolve a path given to `edgeseg check`: an .onnx file as given, or an artifact folder.

    A Jetson bundle is checked as its engine will be built: the ONNX file of the TensorRT major
    (`trt_version`, default the one it was exported for), its DLA core (default build.json's) and
    its optimisation profile. An ONNX artifact is its model file. Other targets have no TensorRT rules.

    Raises:
        CheckpointError: the folder is not an artifact, or its meta.json/build.json is damaged.
        ConfigError: the folder holds an OpenVINO or Core ML artifact.
    """
    path = Path(path)
    if not path.is_dir():
        return CheckInput(path, 10 if trt_version is None else trt_version, dla)
    from edgeseg.export.meta import META_FILE, read_meta
    from edgeseg.export.tensorrt_engine import read_build_config

    if not (path / META_FILE).is_file():
        raise CheckpointError(
            f"'{path}' is a folder without {META_FILE}; pass an .onnx file or an artifact folder written by 'edgeseg export'"
        )
    meta = read_meta(path)
    if meta["target"] == "onnx":
        return CheckInput(path / meta["model_file"], 10 if trt_version is None else trt_version, dla)
    if meta["target"] != "jetson":
        raise ConfigError(
            f"'{path}' is an artifact of target {meta['target']}; 'edgeseg check' applies TensorRT's rules: pass a Jetson bundle "
            "(export --target jetson), an ONNX artifact or an .onnx file"
        )
    cfg = read_build_config(path)
    if trt_version is None:
        trt = meta.get("tensorrt")
        trt_version = trt.get("trt_version") if isinstance(trt, dict) else None
        if trt_version not in TRT_VERSIONS or isinstance(trt_version, bool):
            raise CheckpointError(
                f"'{path / META_FILE}' names no TensorRT major (tensorrt.trt_version 10 or 11); pass --trt-version or re-export the bundle"
            )
    else:
        check_trt_version(trt_version)
    return CheckInput(path / cfg["onnx"][str(trt_version)], trt_version, cfg["dla_core"] if dla is None else dla, cfg["inputs"])


# --- image in, class map out (export --input image --output labels) ------------------------------


def _check_io(g: Graph) -> list[Violation]:
    """A uint8 input must go straight into Cast layers (TensorRT's rule for 8-bit integer I/O), and
    an ArgMax/ArgMin must take the first index of ties (its TopK layer has no other)."""
    tp, out = g.onnx.TensorProto, []
    for inp in g.inputs():
        if g.elem_type.get(inp.name) not in (tp.UINT8, tp.INT8):
            continue
        for n, _ in g.consumers.get(inp.name, []):
            if n.op_type != "Cast":
                out.append(
                    Violation("io-uint8", f"input '{inp.name}'", f"8-bit input feeds {node_name(n)}; TensorRT takes it into a Cast only")
                )
    for n in (n for n in g.nodes if n.op_type in ("ArgMax", "ArgMin")):
        if g.attr(n, "select_last_index", 0):
            out.append(Violation("argmax", node_name(n), "select_last_index=1 is not supported by TensorRT; export with the default (0)"))
    return out


# --- Q/DQ -----------------------------------------------------------------------------------------


def _check_qdq(g: Graph) -> list[Violation]:
    import numpy as np

    out = []
    for n in (n for n in g.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        scale = g.const(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            out.append(Violation("qdq-scale", node_name(n), "scale is not a constant; TensorRT needs build-time scales"))
            continue
        out += _qdq_zero_point(g, n)
        good = (scale > 0) & np.isfinite(scale)
        if not (scale.size and good.all()):
            found = scale[~good].ravel()[:3].tolist()
            out.append(Violation("qdq-scale", node_name(n), f"scale must be positive and finite, found {found}; recalibrate"))
        if is_constant(g, n.input[0]):
            out += _qdq_weight(g, n, scale)
        elif scale.size != 1:
            out.append(
                Violation("qdq-activation-per-tensor", node_name(n), f"activation has {scale.size} scales; TensorRT needs one per tensor")
            )
    out += _fp32_regions(g)
    float_weights = [n for n in g.nodes if n.op_type == "QuantizeLinear" and is_constant(g, n.input[0])]
    if float_weights:
        out.append(
            Violation(
                "qdq-float-weights",
                node_name(float_weights[0]),
                f"{len(float_weights)} weights are stored as float + QuantizeLinear (4x the bytes of int8); "
                "the Jetson bundle of edgeseg export stores them as int8 initializers",
                "warning",
            )
        )
    return out


# Layers that compute nothing (type changes, constants, shape arithmetic) and so cost no FP32 time.
_NO_COMPUTE = frozenset({"Cast", "Constant", "Shape", "Identity"})


def _fp32_regions(g: Graph) -> list[Violation]:
    """A Q/DQ graph whose float layers are FP32: a strongly typed network (TensorRT 11, and 10 with
    --stronglyTyped) runs each layer in its ONNX type, so those layers run in FP32."""
    if not any(n.op_type == "DequantizeLinear" for n in g.nodes):
        return []
    fp32 = g.onnx.TensorProto.FLOAT
    found = [n for n in g.nodes if n.op_type not in _NO_COMPUTE and any(g.elem_type.get(o) == fp32 for o in n.output)]
    if not found:
        return []
    return [
        Violation(
            "fp32-regions",
            node_name(found[0]),
            f"{len(found)} layers of this INT8 graph compute in FP32, which a strongly typed TensorRT network keeps; "
            "edgeseg export --target jetson writes them as FP16 (--float-regions fp16, the default)",
            "warning",
        )
    ]


def _qdq_zero_point(g: Graph, n: Any) -> list[Violation]:
    import numpy as np

    if len(n.input) < 3 or not n.input[2]:
        if n.op_type == "QuantizeLinear" and g.attr(n, "output_dtype", 0) in (0, g.onnx.TensorProto.UINT8):
            return [Violation("qdq-dtype", node_name(n), "no zero point, so ONNX quantizes to uint8; give an int8 zero point of 0")]
        return []
    zp = g.const(n.input[2])
    if zp is None:
        return [Violation("qdq-zero-point", node_name(n), "zero point is not a constant")]
    out = []
    if zp.dtype != np.int8:
        out.append(Violation("qdq-dtype", node_name(n), f"zero point is {zp.dtype}; TensorRT INT8 needs int8 (symmetric)"))
    if np.any(zp != 0):
        out.append(
            Violation("qdq-zero-point", node_name(n), f"zero point {zp.ravel()[:3].tolist()} is not 0; TensorRT needs symmetric INT8")
        )
    return out


def _qdq_weight(g: Graph, n: Any, scale: Any) -> list[Violation]:
    axis = g.attr(n, "axis", 1)
    if scale.ndim == 0:
        return [Violation("qdq-weight-axis", node_name(n), "weight is quantized per tensor; quantize it per output channel (axis 0)")]
    if axis != 0:
        return [
            Violation("qdq-weight-axis", node_name(n), f"weight is quantized on axis {axis}; TensorRT expects axis 0 (output channels)")
        ]
    return []


# --- DLA ------------------------------------------------------------------------------------------

_DLA_TRT11 = (
    "TensorRT 11 has DLA only from 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+; on JetPack 6 use TensorRT 10 (10.7 last with DLA)"
)


def _check_dla(g: Graph, trt: int, core: int, shapes: dict[str, Any] | None) -> list[Violation]:
    out: list[Violation] = []
    if core < 0:
        out.append(Violation("dla", "config", f"DLA core {core} is invalid; Jetson AGX Orin has cores 0 and 1"))
    if trt == 11:
        out.append(Violation("dla", "config", _DLA_TRT11, "warning"))
    for inp in g.inputs():
        dims, where = g.shapes.get(inp.name) or [], f"input '{inp.name}'"
        if any(d is None for d in dims) and not (shapes and _fixed_profile(shapes.get(inp.name))):
            out.append(Violation("dla-shape", where, "DLA does not support dynamic dimensions; export a static shape (or min=opt=max)"))
        if dims and dims[0] and dims[0] > DLA_MAX_BATCH:
            out.append(Violation("dla-shape", where, f"batch {dims[0]} exceeds DLA's maximum {DLA_MAX_BATCH}"))
        if any(d and d > DLA_MAX_DIM for d in dims[1:]):
            out.append(Violation("dla-shape", where, f"a non-batch dimension exceeds DLA's maximum {DLA_MAX_DIM}"))
    for n in g.nodes:
        out += _dla_node(g, n)
    return out


def _fixed_profile(profile: Any) -> bool:
    try:
        return list(profile["min"]) == list(profile["opt"]) == list(profile["max"])
    except (KeyError, TypeError):
        return False


def _dla_warn(n: Any, what: str) -> Violation:
    return Violation("dla-layer", node_name(n), f"{what}; runs on the GPU (GPU fallback)", "warning")


def _dla_node(g: Graph, n: Any) -> list[Violation]:
    if n.op_type in ("ArgMax", "ArgMin", "TopK"):  # int64 indices out, but a TopK layer, not shape arithmetic
        return [_dla_warn(n, f"{n.op_type} is a TopK layer, which DLA does not run (the class map of --output labels)")]
    if n.op_type not in DLA_OPS:
        # Shape arithmetic (int64) folds into constants at build time; only data ops matter.
        return [] if g.elem_type.get(n.output[0]) == g.onnx.TensorProto.INT64 else [_dla_warn(n, f"{n.op_type} is not a DLA layer")]
    if n.op_type in ("Conv", "ConvTranspose"):
        return _dla_conv(g, n)
    if n.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
        return _dla_pool(g, n)
    if n.op_type == "Resize":
        return _dla_resize(g, n)
    if n.op_type == "Concat" and g.attr(n, "axis", 1) not in (1, -3):
        return [_dla_warn(n, "DLA concatenates on the channel axis only")]
    if n.op_type == "Clip":
        lo = g.const(n.input[1]) if len(n.input) > 1 and n.input[1] else g.attr(n, "min", None)
        if lo is None or float(lo) != 0.0:
            return [_dla_warn(n, "DLA runs Clip only as a clipped ReLU (min 0)")]
    return []


def _outside(checks: list[tuple[str, Any, tuple[int, int]]]) -> list[str]:
    return [
        f"{what} {list(vals)} is outside DLA's range {lo}-{hi}"
        for what, vals, (lo, hi) in checks
        if not all(lo <= int(v) <= hi for v in vals)
    ]


def _dla_conv(g: Graph, n: Any) -> list[Violation]:
    w = g.shapes.get(n.input[1]) or _const_shape(g, n.input[1])
    kernel = g.attr(n, "kernel_shape", None) or (w[2:] if w else [])
    if len(kernel) != 2:
        return [_dla_warn(n, "DLA runs 2D convolutions only")]
    pads, dil = g.attr(n, "pads", [0, 0, 0, 0]), g.attr(n, "dilations", [1, 1])
    checks = [
        ("kernel", kernel, DLA_CONV["kernel"]),
        ("stride", g.attr(n, "strides", [1, 1]), DLA_CONV["stride"]),
        ("dilation", dil, DLA_CONV["dilation"]),
        ("pad", pads, DLA_CONV["pad"]),
    ]
    if w and w[0]:
        checks.append(("output channels", [w[0]], DLA_CONV["channels"]))
    out = [_dla_warn(n, msg) for msg in _outside(checks)]
    # Padding must be smaller than the kernel; a dilated kernel spans (k - 1) * d + 1 pixels.
    span = [(int(k) - 1) * int(d) + 1 for k, d in zip(kernel, dil)]
    if not out and any(p >= k for p, k in zip(pads, span * 2)):
        out.append(_dla_warn(n, f"padding {list(pads)} must be smaller than the kernel span {span} on DLA"))
    if n.op_type == "ConvTranspose" and (g.attr(n, "group", 1) != 1 or any(d != 1 for d in dil)):
        out.append(_dla_warn(n, "DLA deconvolution cannot be grouped or dilated"))
    return out


def _const_shape(g: Graph, name: str) -> list[int] | None:
    if g.const(name) is not None:
        return list(g.const(name).shape)
    p = g.producer.get(name)
    return _const_shape(g, p.input[0]) if p is not None and p.op_type in ("DequantizeLinear", "QuantizeLinear") else None


def _dla_pool(g: Graph, n: Any) -> list[Violation]:
    if n.op_type.startswith("Global"):
        window = [d for d in (g.shapes.get(n.input[0]) or [])[2:] if d]
        if len(window) != 2:
            return [_dla_warn(n, "global pooling window unknown (no static shape)")]
        strides, pads = [1, 1], [0, 0, 0, 0]
    else:
        window, strides, pads = g.attr(n, "kernel_shape", []), g.attr(n, "strides", [1, 1]), g.attr(n, "pads", [0, 0, 0, 0])
    checks = [
        ("pooling window", window, DLA_POOL["window"]),
        ("pooling stride", strides, DLA_POOL["stride"]),
        ("pooling pad", pads, DLA_POOL["pad"]),
    ]
    return [_dla_warn(n, msg) for msg in _outside(checks)]


def _dla_resize(g: Graph, n: Any) -> list[Violation]:
    src, dst = g.shapes.get(n.input[0]), g.shapes.get(n.output[0])
    if not src or not dst or len(src) != 4 or None in src or None in dst:
        return [_dla_warn(n, "DLA needs a 4-D Resize with static shapes")]
    if src[:2] != dst[:2]:
        return [_dla_warn(n, "DLA resizes only H and W (batch and channel scales must be 1)")]
    ratios = [dst[i] / src[i] for i in (2, 3)]
    lo, hi = DLA_RESIZE_SCALE
    if not all(r.is_integer() and lo <= r <= hi for r in ratios):
        return [_dla_warn(n, f"scales {[round(r, 3) for r in ratios]} must be integers in {lo}-{hi} on DLA")]
    if g.attr(n, "mode", "nearest") == "linear" and g.attr(n, "coordinate_transformation_mode", "half_pixel") not in (
        "half_pixel",
        "pytorch_half_pixel",
    ):
        return [_dla_warn(n, "DLA bilinear resize needs half_pixel coordinates")]
    return []
