"""TensorRT preflight, graph side: the ONNX model's index and the operator and graph rules.

What TensorRT's ONNX parser documents about a whole graph: the opset range and supported-operator
matrix, Resize restrictions, weights known at build time, static input shapes (or a profile) and
int64 initializers. edgeseg.export.preflight adds the Q/DQ and DLA rules and runs them all
(`check_onnx`).

Sources (kept as data below):
- onnx/onnx-tensorrt docs/operators.md, the TensorRT 10.15 matrix ("supports operators in the
  inclusive range of opset 9 to opset 24"); TensorRT 10.0 stated opset 9 to 20, so 20 is the
  ceiling every 10.x parser accepts.
- TensorRT 11.x: the same matrix plus the parser additions of the 11.0 release (Swish); the
  11.x opset guide gives a maximum of 25 from 11.5, 24 before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import CheckpointError, missing_dependency

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


@dataclass(frozen=True)
class Violation:
    """One finding: the rule broken, the node (or tensor) and what to do."""

    rule: str
    node: str
    message: str
    severity: str = "error"  # "error" stops an export; "warning" is reported (DLA -> GPU fallback)

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.node}: {self.message}"


# --- model access -------------------------------------------------------------------------------


def load_model(path: str | Path | Any) -> Any:
    """An onnx.ModelProto from a file (or as given); a missing or unreadable file is a CheckpointError."""
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "onnx") from None
    if isinstance(path, onnx.ModelProto):
        return path
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a folder; pass the .onnx file inside it (e.g. {path / 'model.onnx'})")
    if not path.is_file():
        raise CheckpointError(f"ONNX file '{path}' does not exist; pass a model written by 'edgeseg export'")
    if path.stat().st_size == 0:
        raise CheckpointError(f"ONNX file '{path}' is empty (0 bytes); export it again")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a bad file
        raise CheckpointError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}); export it again") from None


class Graph:
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


def node_name(node: Any) -> str:
    """How a finding names a node: its op type and name (or first output)."""
    return f"{node.op_type} '{node.name or node.output[0]}'"


# --- rules ----------------------------------------------------------------------------------------


def check_opset(model: Any, trt: int) -> list[Violation]:
    """Default-domain opset outside TensorRT `trt`.x's range, and custom domains (plugins)."""
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


def check_ops(g: Graph, trt: int) -> list[Violation]:
    """Operators outside TensorRT `trt`.x's matrix, Resize restrictions, run-time conv weights."""
    out = []
    for n in g.nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS[trt]:
            op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            out.append(
                Violation("op-support", node_name(n), f"{op} is not in TensorRT {trt}.x's ONNX operator list (onnx-tensorrt operators.md)")
            )
        elif n.op_type == "Resize":
            out += _check_resize(g, n)
        elif n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and not is_constant(g, n.input[1]):
            out.append(
                Violation("op-support", node_name(n), "weights are computed at run time; TensorRT needs an initializer (or DQ of one)")
            )
    return out


def _check_resize(g: Graph, n: Any) -> list[Violation]:
    mode, ctm = g.attr(n, "mode", "nearest"), g.attr(n, "coordinate_transformation_mode", "half_pixel")
    bad = []
    if mode not in _RESIZE_MODES:
        bad.append(f"mode '{mode}' (use nearest or linear)")
    if ctm not in _RESIZE_TRANSFORMS:
        bad.append(f"coordinate_transformation_mode '{ctm}'")
    if g.attr(n, "antialias", 0):
        bad.append("antialias=1")
    return [Violation("op-restriction", node_name(n), f"Resize {b} is not supported by TensorRT") for b in bad]


def is_constant(g: Graph, name: str) -> bool:
    """True when a tensor is a constant, possibly behind Q/DQ or layout ops (a weight)."""
    if g.const(name) is not None:
        return True
    p = g.producer.get(name)
    return (
        p is not None
        and p.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast", "Transpose", "Reshape")
        and is_constant(g, p.input[0])
    )


def check_shapes(g: Graph, shapes: dict[str, Any] | None) -> list[Violation]:
    """Inputs with dynamic dimensions and no valid min/opt/max profile in `shapes`."""
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


def check_int64(g: Graph) -> list[Violation]:
    """int64 constants beyond the int32 range, or feeding data (not shape) operands."""
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
                Violation(
                    "int64-weights", where, f"int64 data into {node_name(data_uses[0])}; TensorRT casts it to int32 (store float/int32)"
                )
            )
    return out
