"""TensorRT preflight: static checks of an ONNX model before it goes to a Jetson.

TensorRT cannot run on this machine, so the Jetson bundle is made right by construction and
checked here against what TensorRT documents: the opset range and supported-operator matrix of
its ONNX parser, its explicit-quantization (Q/DQ) rules, static shapes, int64 weights, and the
DLA restrictions when a DLA core is asked for. Each finding is one line naming the node and the
rule; errors stop an export, warnings (a layer that will fall back from DLA to the GPU) do not.

Sources (kept as data below):
- onnx/onnx-tensorrt docs/operators.md, the TensorRT 10.15 matrix ("supports operators in the
  inclusive range of opset 9 to opset 24"); TensorRT 10.0 stated opset 9 to 20, so 20 is the
  ceiling every 10.x parser accepts.
- TensorRT 11.x: the same matrix plus the parser additions of the 11.0 release (Swish); the
  11.x opset guide gives a maximum of 25 from 11.5, 24 before.
- TensorRT "DLA Supported Layers and Restrictions" (Jetson/DriveOS DLA), and "Working with DLA"
  for 11.x: DLA returns in 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+; 10.7 is the last 10.x
  release with DLA.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import CheckpointError, ConfigError, missing_dependency

TRT_VERSIONS = (10, 11)

# Opset range of the default ("ai.onnx") domain each TensorRT major accepts in every minor.
OPSET_RANGE = {10: (9, 20), 11: (9, 24)}

# Operators marked "Y" in onnx-tensorrt docs/operators.md (TensorRT 10.15).
_TRT10_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
SUPPORTED_OPS = {10: _TRT10_OPS, 11: _TRT10_OPS | {"Swish"}}

# Resize restrictions from the same matrix.
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}

# Inputs that only carry shapes, axes or indices: int64 is their natural type and TensorRT
# treats them as shape tensors, so int64 initializers there are fine.
_SHAPE_OPERANDS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Resize": {1, 2, 3}, "Upsample": {1},
    "Slice": {1, 2, 3, 4}, "Squeeze": {1}, "Unsqueeze": {1}, "Pad": {1, 3}, "Split": {1}, "TopK": {1},
    "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
    "ReduceL1": {1}, "ReduceL2": {1}, "ReduceLogSum": {1}, "ReduceLogSumExp": {1}, "ReduceSumSquare": {1},
    "Gather": {1}, "GatherElements": {1}, "GatherND": {1}, "ScatterND": {1}, "ScatterElements": {1},
    "OneHot": {1}, "Range": {0, 1, 2}, "CumSum": {1}, "Trilu": {1},
}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

# DLA (Jetson/DriveOS): ONNX ops whose TensorRT layer DLA can run, and the numeric limits.
DLA_OPS = frozenset("""
Conv ConvTranspose Gemm Relu Sigmoid Tanh Clip LeakyRelu PRelu Add Sub Mul Max Min Div Pow Equal Greater
Less Concat MaxPool AveragePool GlobalAveragePool GlobalMaxPool LRN BatchNormalization Resize Softmax
Reshape Transpose Flatten Squeeze Unsqueeze Slice ReduceMax Abs Sin Cos Atan QuantizeLinear
DequantizeLinear Identity Constant
""".split())
DLA_MAX_BATCH = 4096
DLA_MAX_DIM = 8192
DLA_CONV = {"kernel": (1, 32), "stride": (1, 8), "dilation": (1, 32), "pad": (0, 31), "channels": (1, 8192)}
DLA_POOL = {"window": (1, 8), "stride": (1, 16), "pad": (0, 7)}
DLA_RESIZE_SCALE = (1, 32)


@dataclass(frozen=True)
class Violation:
    """One finding: the rule broken, the node (or tensor) and what to do."""

    rule: str
    node: str
    message: str
    severity: str = "error"  # "error" stops an export; "warning" is reported (DLA -> GPU fallback)

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.node}: {self.message}"


def check_onnx(
    path: str | Path | Any,
    target: str = "jetson",
    *,
    trt_version: int = 10,
    dla: int | None = None,
    shapes: dict[str, Any] | None = None,
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
    if trt_version not in TRT_VERSIONS:
        raise ConfigError(f"--trt-version {trt_version} is not supported; use 10 or 11")
    model = _load(path)
    g = _Graph(model)
    out: list[Violation] = []
    out += _check_opset(model, trt_version)
    out += _check_ops(g, trt_version)
    out += _check_qdq(g)
    out += _check_shapes(g, shapes)
    out += _check_int64(g)
    if dla is not None:
        out += _check_dla(g, trt_version, dla, shapes)
    return sorted(out, key=lambda v: v.severity != "error")


def format_violations(violations: Iterable[Violation]) -> str:
    """One line per violation (for a file or the terminal)."""
    return "\n".join(str(v) for v in violations)


# --- model access -------------------------------------------------------------------------------


def _load(path: str | Path | Any) -> Any:
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "onnx") from None
    if isinstance(path, onnx.ModelProto):
        return path
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file '{path}' does not exist; pass a model written by 'edgeseg export'")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a bad file
        raise CheckpointError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}); export it again") from None


class _Graph:
    """Index of a graph: constants by name, producers and consumers, inferred shapes."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper, shape_inference

        try:
            inferred = shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - shapes are a help, not a requirement
            inferred = model
        graph = inferred.graph
        self.graph = graph
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.consts: dict[str, Any] = {n: numpy_helper.to_array(t) for n, t in self.inits.items()}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.shapes: dict[str, list[int | None]] = {}
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        self.elem_type = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
        self.onnx = onnx

    def const(self, name: str) -> Any:
        """The constant value of a tensor (initializer or Constant output), else None."""
        return self.consts.get(name)

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                return self.onnx.helper.get_attribute_value(a)
        return default


def _name(node: Any) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


# --- rules ----------------------------------------------------------------------------------------


def _check_opset(model: Any, trt: int) -> list[Violation]:
    lo, hi = OPSET_RANGE[trt]
    out = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if not lo <= imp.version <= hi:
                out.append(Violation("opset", "model", f"opset {imp.version} is outside TensorRT {trt}.x's range {lo}-{hi}; export with an opset in that range"))
        elif imp.domain not in ("ai.onnx.ml",):
            out.append(Violation("opset", "model", f"custom domain '{imp.domain}' needs a TensorRT plugin; export with standard ONNX ops only"))
    return out


def _check_ops(g: _Graph, trt: int) -> list[Violation]:
    supported = SUPPORTED_OPS[trt]
    out = []
    for n in g.nodes:
        if n.domain not in ("", "ai.onnx"):
            out.append(Violation("op-support", _name(n), f"op of domain '{n.domain}' is not in TensorRT {trt}.x's ONNX operator list"))
        elif n.op_type not in supported:
            out.append(Violation("op-support", _name(n), f"{n.op_type} is not in TensorRT {trt}.x's ONNX operator list (onnx-tensorrt operators.md)"))
        elif n.op_type == "Resize":
            out += _check_resize(g, n)
        elif n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and not _is_constant_weight(g, n.input[1]):
            out.append(Violation("op-support", _name(n), "weights are computed at run time; TensorRT needs them constant (an initializer, or DequantizeLinear of one)"))
    return out


def _check_resize(g: _Graph, n: Any) -> list[Violation]:
    out = []
    mode = _s(g.attr(n, "mode", b"nearest"))
    ctm = _s(g.attr(n, "coordinate_transformation_mode", b"half_pixel"))
    if mode not in _RESIZE_MODES:
        out.append(Violation("op-restriction", _name(n), f"Resize mode '{mode}' is not supported by TensorRT; use nearest or linear"))
    if ctm not in _RESIZE_TRANSFORMS:
        out.append(Violation("op-restriction", _name(n), f"Resize coordinate_transformation_mode '{ctm}' is not supported by TensorRT"))
    if g.attr(n, "antialias", 0):
        out.append(Violation("op-restriction", _name(n), "Resize antialias=1 is not supported by TensorRT"))
    return out


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _is_constant_weight(g: _Graph, name: str) -> bool:
    if g.const(name) is not None:
        return True
    p = g.producer.get(name)
    if p is not None and p.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast", "Transpose", "Reshape"):
        return _is_constant_weight(g, p.input[0])
    return False


def _check_qdq(g: _Graph) -> list[Violation]:
    out = []
    for n in g.nodes:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = g.const(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            out.append(Violation("qdq-scale", _name(n), "scale is not a constant; TensorRT needs build-time scales"))
            continue
        out += _qdq_zero_point(g, n)
        if not (scale.size and (scale > 0).all() and _finite(scale)):
            bad = scale[~((scale > 0) & _finite_mask(scale))]
            out.append(Violation("qdq-scale", _name(n), f"scale must be positive and finite, found {bad.ravel()[:3].tolist()}; recalibrate (a dead channel needs a floor)"))
        is_weight = _is_constant_weight(g, n.input[0])
        if is_weight:
            out += _qdq_weight(g, n, scale)
        elif scale.size != 1:
            out.append(Violation("qdq-activation-per-tensor", _name(n), f"activation scale has {scale.size} values; TensorRT activations are quantized per tensor (one scale)"))
    return out


def _finite_mask(a: Any) -> Any:
    import numpy as np

    return np.isfinite(a)


def _finite(a: Any) -> bool:
    return bool(_finite_mask(a).all())


def _qdq_zero_point(g: _Graph, n: Any) -> list[Violation]:
    import numpy as np

    if len(n.input) < 3 or not n.input[2]:
        if n.op_type == "QuantizeLinear" and g.attr(n, "output_dtype", 0) in (0, g.onnx.TensorProto.UINT8):
            return [Violation("qdq-dtype", _name(n), "no zero point: ONNX then quantizes to uint8; give an int8 zero point of 0")]
        return []
    zp = g.const(n.input[2])
    if zp is None:
        return [Violation("qdq-zero-point", _name(n), "zero point is not a constant")]
    out = []
    if zp.dtype != np.int8:
        out.append(Violation("qdq-dtype", _name(n), f"zero point is {zp.dtype}; TensorRT INT8 needs int8 (symmetric)"))
    if np.any(zp != 0):
        out.append(Violation("qdq-zero-point", _name(n), f"zero point {zp.ravel()[:3].tolist()} is not 0; TensorRT needs symmetric quantization"))
    return out


def _qdq_weight(g: _Graph, n: Any, scale: Any) -> list[Violation]:
    axis = g.attr(n, "axis", 1)
    if scale.size == 1 and scale.ndim == 0:
        return [Violation("qdq-weight-axis", _name(n), "weight is quantized per tensor; quantize weights per output channel (axis 0)")]
    if axis != 0:
        return [Violation("qdq-weight-axis", _name(n), f"weight is quantized on axis {axis}; TensorRT expects per-channel weights on axis 0 (output channels)")]
    return []


def _check_shapes(g: _Graph, shapes: dict[str, Any] | None) -> list[Violation]:
    out = []
    for inp in g.graph.input:
        if inp.name in g.inits:
            continue
        dims = g.shapes.get(inp.name)
        if dims is None or any(d is None or d <= 0 for d in dims):
            if shapes and inp.name in shapes and _profile_ok(shapes[inp.name], dims):
                continue
            shown = "x".join("?" if d is None else str(d) for d in (dims or []))
            out.append(Violation("static-shape", f"input '{inp.name}'", f"shape {shown or 'unknown'} is dynamic; export a static shape or give an optimisation profile (min/opt/max)"))
    return out


def _profile_ok(profile: Any, dims: list[int | None] | None) -> bool:
    try:
        mins, opts, maxs = (list(profile[k]) for k in ("min", "opt", "max"))
    except (KeyError, TypeError):
        return False
    n = len(dims or mins)
    return all(len(s) == n for s in (mins, opts, maxs)) and all(a <= b <= c for a, b, c in zip(mins, opts, maxs))


def _check_int64(g: _Graph) -> list[Violation]:
    import numpy as np

    out = []
    for name, arr in g.consts.items():
        if arr.dtype != np.int64:
            continue
        uses = g.consumers.get(name, [])
        data_uses = [(n, i) for n, i in uses if i not in _SHAPE_OPERANDS.get(n.op_type, set())]
        if arr.size and (arr.min() < _INT32_MIN or arr.max() > _INT32_MAX):
            out.append(Violation("int64-weights", f"initializer '{name}'", "int64 values beyond the int32 range would be clamped by TensorRT; store them as int32"))
        elif data_uses:
            n, _ = data_uses[0]
            out.append(Violation("int64-weights", f"initializer '{name}'", f"int64 tensor feeds {_name(n)} as data; TensorRT casts it to int32 (store weights as float or int32)"))
    return out


# --- DLA ------------------------------------------------------------------------------------------


def _check_dla(g: _Graph, trt: int, core: int, shapes: dict[str, Any] | None) -> list[Violation]:
    out: list[Violation] = []
    if core < 0:
        out.append(Violation("dla", "config", f"DLA core {core} is invalid; Jetson AGX Orin has cores 0 and 1"))
    if trt == 11:
        out.append(Violation("dla", "config", "TensorRT 11 has DLA only from 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+ (none on Thor); on JetPack 6 use TensorRT 10 (10.7 is the last 10.x with DLA)", "warning"))
    for inp in g.graph.input:
        if inp.name in g.inits:
            continue
        dims = g.shapes.get(inp.name) or []
        if any(d is None for d in dims) and not (shapes and _fixed_profile(shapes.get(inp.name))):
            out.append(Violation("dla-shape", f"input '{inp.name}'", "DLA does not support dynamic dimensions; export a static shape (or min=opt=max)"))
        if dims and dims[0] and dims[0] > DLA_MAX_BATCH:
            out.append(Violation("dla-shape", f"input '{inp.name}'", f"batch {dims[0]} exceeds DLA's maximum {DLA_MAX_BATCH}"))
        if any(d and d > DLA_MAX_DIM for d in dims[1:]):
            out.append(Violation("dla-shape", f"input '{inp.name}'", f"a non-batch dimension exceeds DLA's maximum {DLA_MAX_DIM}"))
    for n in g.nodes:
        out += _dla_node(g, n)
    return out


def _fixed_profile(profile: Any) -> bool:
    try:
        return list(profile["min"]) == list(profile["opt"]) == list(profile["max"])
    except (KeyError, TypeError):
        return False


def _dla_warn(n: Any, what: str) -> Violation:
    return Violation("dla-layer", _name(n), f"{what}; runs on the GPU (GPU fallback)", "warning")


def _dla_node(g: _Graph, n: Any) -> list[Violation]:
    if n.op_type not in DLA_OPS:
        # Shape arithmetic (int64) folds into constants at build time; only data ops matter.
        if g.elem_type.get(n.output[0]) == g.onnx.TensorProto.INT64:
            return []
        return [_dla_warn(n, f"{n.op_type} is not a DLA layer")]
    if n.op_type in ("Conv", "ConvTranspose"):
        return _dla_conv(g, n)
    if n.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
        return _dla_pool(g, n)
    if n.op_type == "Resize":
        return _dla_resize(g, n)
    if n.op_type == "Concat" and g.attr(n, "axis", 1) not in (1, -3):
        return [_dla_warn(n, "DLA concatenates on the channel axis only")]
    if n.op_type == "Clip" and not _clip_from_zero(g, n):
        return [_dla_warn(n, "DLA runs Clip only as a clipped ReLU (min 0)")]
    return []


def _clip_from_zero(g: _Graph, n: Any) -> bool:
    lo = g.const(n.input[1]) if len(n.input) > 1 and n.input[1] else g.attr(n, "min", None)
    return lo is not None and float(lo) == 0.0


def _in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _dla_conv(g: _Graph, n: Any) -> list[Violation]:
    w = g.shapes.get(n.input[1]) or _const_shape(g, n.input[1])
    kernel = g.attr(n, "kernel_shape", None) or (w[2:] if w else [])
    if len(kernel) != 2:
        return [_dla_warn(n, "DLA runs 2D convolutions only")]
    checks = [
        ("kernel", kernel, DLA_CONV["kernel"]),
        ("stride", g.attr(n, "strides", [1, 1]), DLA_CONV["stride"]),
        ("dilation", g.attr(n, "dilations", [1, 1]), DLA_CONV["dilation"]),
        ("pad", g.attr(n, "pads", [0, 0, 0, 0]), DLA_CONV["pad"]),
    ]
    if w and w[0]:
        checks.append(("output channels", [w[0]], DLA_CONV["channels"]))
    out = [_dla_warn(n, f"{what} {vals} is outside DLA's range {lo}-{hi}") for what, vals, (lo, hi) in checks if not all(_in_range(int(v), (lo, hi)) for v in vals)]
    # Padding must be smaller than the kernel; a dilated kernel spans (k - 1) * d + 1 pixels.
    pads, dil = g.attr(n, "pads", [0, 0, 0, 0]), g.attr(n, "dilations", [1, 1])
    span = [(int(k) - 1) * int(d) + 1 for k, d in zip(kernel, dil)]
    if not out and any(p >= k for p, k in zip(pads, span * 2)):
        out.append(_dla_warn(n, f"padding {list(pads)} must be smaller than the kernel span {span} on DLA"))
    if n.op_type == "ConvTranspose" and (g.attr(n, "group", 1) != 1 or any(d != 1 for d in g.attr(n, "dilations", [1, 1]))):
        out.append(_dla_warn(n, "DLA deconvolution cannot be grouped or dilated"))
    return out


def _const_shape(g: _Graph, name: str) -> list[int] | None:
    if g.const(name) is not None:
        return list(g.const(name).shape)
    p = g.producer.get(name)
    if p is not None and p.op_type in ("DequantizeLinear", "QuantizeLinear"):
        return _const_shape(g, p.input[0])
    return None


def _dla_pool(g: _Graph, n: Any) -> list[Violation]:
    if n.op_type.startswith("Global"):
        dims = g.shapes.get(n.input[0]) or []
        window = [d for d in dims[2:] if d]
        if len(window) != 2:
            return [_dla_warn(n, "global pooling window unknown (no static shape)")]
        strides, pads = [1, 1], [0, 0, 0, 0]
    else:
        window = g.attr(n, "kernel_shape", [])
        strides, pads = g.attr(n, "strides", [1, 1]), g.attr(n, "pads", [0, 0, 0, 0])
    out = []
    for what, vals, (lo, hi) in (("window", window, DLA_POOL["window"]), ("stride", strides, DLA_POOL["stride"]), ("pad", pads, DLA_POOL["pad"])):
        if not all(_in_range(int(v), (lo, hi)) for v in vals):
            out.append(_dla_warn(n, f"pooling {what} {list(vals)} is outside DLA's range {lo}-{hi}"))
    return out


def _dla_resize(g: _Graph, n: Any) -> list[Violation]:
    src, dst = g.shapes.get(n.input[0]), g.shapes.get(n.output[0])
    if not src or not dst or len(src) != 4 or None in src or None in dst:
        return [_dla_warn(n, "DLA needs a 4-D Resize with static shapes")]
    if src[:2] != dst[:2]:
        return [_dla_warn(n, "DLA resizes only H and W (batch and channel scales must be 1)")]
    ratios = [dst[i] / src[i] for i in (2, 3)]
    if not all(r.is_integer() and _in_range(int(r), DLA_RESIZE_SCALE) for r in ratios):
        return [_dla_warn(n, f"scales {[round(r, 3) for r in ratios]} must be integers in {DLA_RESIZE_SCALE[0]}-{DLA_RESIZE_SCALE[1]} on DLA")]
    if _s(g.attr(n, "mode", b"nearest")) == "linear" and _s(g.attr(n, "coordinate_transformation_mode", b"half_pixel")) not in ("half_pixel", "pytorch_half_pixel"):
        return [_dla_warn(n, "DLA bilinear resize needs half_pixel coordinates")]
    return []
