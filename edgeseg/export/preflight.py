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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import CheckpointError, ConfigError, missing_dependency

TRT_VERSIONS = (10, 11)

# Opset range of the default ("ai.onnx") domain each TensorRT major accepts in every minor.
OPSET_RANGE = {10: (9, 20), 11: (9, 24)}

# Operators marked "Y" in onnx-tensorrt docs/operators.md (TensorRT 10.15).
_TRT10_OPS = frozenset(
    """
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
""".split()
)
SUPPORTED_OPS = {10: _TRT10_OPS, 11: _TRT10_OPS | {"Swish"}}

# Resize restrictions from the same matrix.
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}

# Inputs that only carry shapes, axes or indices: int64 is their natural type and TensorRT
# treats them as shape tensors, so int64 initializers there are fine.
_SHAPE_OPERANDS: dict[str, set[int]] = {
    op: {1}
    for op in (
        "Reshape Expand Tile Upsample Squeeze Unsqueeze Split TopK Gather GatherElements GatherND ScatterND ScatterElements OneHot CumSum "
        "Trilu ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare"
    ).split()
}
_SHAPE_OPERANDS.update({"ConstantOfShape": {0}, "Resize": {1, 2, 3}, "Slice": {1, 2, 3, 4}, "Pad": {1, 3}, "Range": {0, 1, 2}})
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

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
    if trt_version not in TRT_VERSIONS:
        raise ConfigError(f"--trt-version {trt_version} is not supported; use 10 or 11")
    model = _load(path)
    g = _Graph(model)
    out = _check_opset(model, trt_version) + _check_ops(g, trt_version) + _check_qdq(g) + _check_shapes(g, shapes) + _check_int64(g)
    if dla is not None:
        out += _check_dla(g, trt_version, dla, shapes)
    return sorted(out, key=lambda v: v.severity != "error")


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
    """Index of a graph: constants by name, producers and consumers, inferred shapes and types."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper, shape_inference

        try:
            model = shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - shapes are a help, not a requirement
            pass
        self.onnx, self.graph = onnx, model.graph
        self.nodes = list(self.graph.node)
        self.inits = {t.name for t in self.graph.initializer}
        self.consts: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.shapes: dict[str, list[int | None]] = {}
        self.elem_type: dict[str, int] = {}
        for vi in [*self.graph.value_info, *self.graph.input, *self.graph.output]:
            tt = vi.type.tensor_type
            self.elem_type[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]

    def const(self, name: str) -> Any:
        """The constant value of a tensor (initializer or Constant output), else None."""
        return self.consts.get(name)

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        value = next((self.onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
        return value.decode() if isinstance(value, bytes) else value

    def inputs(self) -> list[Any]:
        return [i for i in self.graph.input if i.name not in self.inits]


def _name(node: Any) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


# --- rules ----------------------------------------------------------------------------------------


def _check_opset(model: Any, trt: int) -> list[Violation]:
    lo, hi = OPSET_RANGE[trt]
    out = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo <= imp.version <= hi:
            out.append(
                Violation("opset", "model", f"opset {imp.version} is outside TensorRT {trt}.x's range {lo}-{hi}; export with one in it")
            )
        elif imp.domain not in ("", "ai.onnx", "ai.onnx.ml"):
            out.append(Violation("opset", "model", f"custom domain '{imp.domain}' needs a TensorRT plugin; export standard ONNX ops only"))
    return out


def _check_ops(g: _Graph, trt: int) -> list[Violation]:
    out = []
    for n in g.nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS[trt]:
            op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            out.append(
                Violation("op-support", _name(n), f"{op} is not in TensorRT {trt}.x's ONNX operator list (onnx-tensorrt operators.md)")
            )
        elif n.op_type == "Resize":
            out += _check_resize(g, n)
        elif n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and not _constant(g, n.input[1]):
            out.append(Violation("op-support", _name(n), "weights are computed at run time; TensorRT needs an initializer (or DQ of one)"))
    return out


def _check_resize(g: _Graph, n: Any) -> list[Violation]:
    mode, ctm = g.attr(n, "mode", "nearest"), g.attr(n, "coordinate_transformation_mode", "half_pixel")
    bad = []
    if mode not in _RESIZE_MODES:
        bad.append(f"mode '{mode}' (use nearest or linear)")
    if ctm not in _RESIZE_TRANSFORMS:
        bad.append(f"coordinate_transformation_mode '{ctm}'")
    if g.attr(n, "antialias", 0):
        bad.append("antialias=1")
    return [Violation("op-restriction", _name(n), f"Resize {b} is not supported by TensorRT") for b in bad]


def _constant(g: _Graph, name: str) -> bool:
    """True when a tensor is a constant, possibly behind Q/DQ or layout ops (a weight)."""
    if g.const(name) is not None:
        return True
    p = g.producer.get(name)
    return (
        p is not None
        and p.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast", "Transpose", "Reshape")
        and _constant(g, p.input[0])
    )


def _check_qdq(g: _Graph) -> list[Violation]:
    import numpy as np

    out = []
    for n in (n for n in g.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        scale = g.const(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            out.append(Violation("qdq-scale", _name(n), "scale is not a constant; TensorRT needs build-time scales"))
            continue
        out += _qdq_zero_point(g, n)
        good = (scale > 0) & np.isfinite(scale)
        if not (scale.size and good.all()):
            found = scale[~good].ravel()[:3].tolist()
            out.append(Violation("qdq-scale", _name(n), f"scale must be positive and finite, found {found}; recalibrate"))
        if _constant(g, n.input[0]):
            out += _qdq_weight(g, n, scale)
        elif scale.size != 1:
            out.append(
                Violation("qdq-activation-per-tensor", _name(n), f"activation has {scale.size} scales; TensorRT needs one per tensor")
            )
    return out


def _qdq_zero_point(g: _Graph, n: Any) -> list[Violation]:
    import numpy as np

    if len(n.input) < 3 or not n.input[2]:
        if n.op_type == "QuantizeLinear" and g.attr(n, "output_dtype", 0) in (0, g.onnx.TensorProto.UINT8):
            return [Violation("qdq-dtype", _name(n), "no zero point, so ONNX quantizes to uint8; give an int8 zero point of 0")]
        return []
    zp = g.const(n.input[2])
    if zp is None:
        return [Violation("qdq-zero-point", _name(n), "zero point is not a constant")]
    out = []
    if zp.dtype != np.int8:
        out.append(Violation("qdq-dtype", _name(n), f"zero point is {zp.dtype}; TensorRT INT8 needs int8 (symmetric)"))
    if np.any(zp != 0):
        out.append(Violation("qdq-zero-point", _name(n), f"zero point {zp.ravel()[:3].tolist()} is not 0; TensorRT needs symmetric INT8"))
    return out


def _qdq_weight(g: _Graph, n: Any, scale: Any) -> list[Violation]:
    axis = g.attr(n, "axis", 1)
    if scale.ndim == 0:
        return [Violation("qdq-weight-axis", _name(n), "weight is quantized per tensor; quantize it per output channel (axis 0)")]
    if axis != 0:
        return [Violation("qdq-weight-axis", _name(n), f"weight is quantized on axis {axis}; TensorRT expects axis 0 (output channels)")]
    return []


def _check_shapes(g: _Graph, shapes: dict[str, Any] | None) -> list[Violation]:
    out = []
    for inp in g.inputs():
        dims = g.shapes.get(inp.name)
        if dims is not None and all(d is not None and d > 0 for d in dims):
            continue
        if shapes and _profile_ok(shapes.get(inp.name), dims):
            continue
        shown = "x".join("?" if d is None else str(d) for d in (dims or [])) or "unknown"
        out.append(
            Violation(
                "static-shape", f"input '{inp.name}'", f"shape {shown} is dynamic; export a static shape or give a min/opt/max profile"
            )
        )
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
        data_uses = [n for n, i in g.consumers.get(name, []) if i not in _SHAPE_OPERANDS.get(n.op_type, set())]
        where = f"initializer '{name}'"
        if arr.size and (arr.min() < _INT32_MIN or arr.max() > _INT32_MAX):
            out.append(Violation("int64-weights", where, "int64 values beyond the int32 range would be clamped by TensorRT; store int32"))
        elif data_uses:
            out.append(
                Violation("int64-weights", where, f"int64 data into {_name(data_uses[0])}; TensorRT casts it to int32 (store float/int32)")
            )
    return out


# --- DLA ------------------------------------------------------------------------------------------

_DLA_TRT11 = (
    "TensorRT 11 has DLA only from 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+; on JetPack 6 use TensorRT 10 (10.7 last with DLA)"
)


def _check_dla(g: _Graph, trt: int, core: int, shapes: dict[str, Any] | None) -> list[Violation]:
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
    return Violation("dla-layer", _name(n), f"{what}; runs on the GPU (GPU fallback)", "warning")


def _dla_node(g: _Graph, n: Any) -> list[Violation]:
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


def _dla_conv(g: _Graph, n: Any) -> list[Violation]:
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


def _const_shape(g: _Graph, name: str) -> list[int] | None:
    if g.const(name) is not None:
        return list(g.const(name).shape)
    p = g.producer.get(name)
    return _const_shape(g, p.input[0]) if p is not None and p.op_type in ("DequantizeLinear", "QuantizeLinear") else None


def _dla_pool(g: _Graph, n: Any) -> list[Violation]:
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


def _dla_resize(g: _Graph, n: Any) -> list[Violation]:
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
