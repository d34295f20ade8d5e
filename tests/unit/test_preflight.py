"""TensorRT preflight: one crafted ONNX model per rule, each breaking exactly that rule, plus a
clean Q/DQ model that passes. Models are built with onnx.helper (no exporter involved)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import CheckpointError, ConfigError
from edgeseg.export.preflight import Violation, check_onnx
from edgeseg.export.preflight_graph import OPSET_RANGE, SUPPORTED_OPS

REPO = Path(__file__).resolve().parents[2]
GPU = "runs on the GPU (GPU fallback)"  # how every DLA finding ends
MISSING = "ONNX file '{}' does not exist; pass a model written by 'edgeseg export'"
C_IN, C_OUT, SIZE = 3, 4, 8


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _graph_io(
    shape: list[int | str] | None = None, out_shape: list[int] | None = None, elem: int = TensorProto.FLOAT
) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    x = helper.make_tensor_value_info("x", elem, shape or [1, C_IN, SIZE, SIZE])
    y = helper.make_tensor_value_info("y", elem, out_shape or [1, C_OUT, SIZE, SIZE])
    return x, y


def qdq_conv(
    *,
    act_scale: np.ndarray | float = 0.05,
    act_zp: np.ndarray | None = None,
    w_scale: np.ndarray | None = None,
    w_zp: np.ndarray | None = None,
    w_axis: int = 0,
    opset: int = 19,
    float_type: type = np.float16,
    x_shape: list[int | str] | None = None,
    conv_attrs: dict | None = None,
    kernel: int = 3,
    extra_nodes: list[onnx.NodeProto] | None = None,
    extra_inits: list[onnx.TensorProto] | None = None,
    tail: str = "r",
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(W = DQ(int8 W, per-channel axis 0)) -> Relu -> y: the TensorRT-clean pattern,
    its float layers in FP16 (opset 19, FP16 scales) as edgeseg's Jetson INT8 bundle writes them.

    Each keyword breaks one thing; defaults give a model every rule accepts.
    """
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (C_OUT, C_IN, kernel, kernel)).astype(np.int8)
    w_scale = np.full(C_OUT, 0.01, float_type) if w_scale is None else w_scale.astype(float_type)
    if np.ndim(act_scale) == 0:
        act_scale = float_type(act_scale)
    w_zp = np.zeros(np.shape(w_scale), np.int8) if w_zp is None else w_zp
    act_zp = np.int8(0) if act_zp is None else act_zp
    inits = [
        _init("a_scale", np.asarray(act_scale, float_type)),
        _init("a_zp", act_zp),
        _init("w_q", w),
        _init("w_scale", w_scale),
        _init("w_zp", w_zp),
        _init("bias", np.zeros(C_OUT, float_type)),
    ]
    attrs = {"kernel_shape": [kernel, kernel], "pads": [kernel // 2] * 4, **(conv_attrs or {})}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zp"], ["xdq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis),
        helper.make_node("Conv", ["xdq", "w", "bias"], ["c"], name="conv", **attrs),
        helper.make_node("Relu", ["c"], [tail], name="relu"),
    ]
    nodes += extra_nodes or [helper.make_node("Identity", [tail], ["y"], name="out")]
    x, y = _graph_io(x_shape, elem=helper.np_dtype_to_tensor_dtype(np.dtype(float_type)))
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits + (extra_inits or []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def rules(found: list[Violation], severity: str | None = None) -> set[str]:
    return {v.rule for v in found if severity is None or v.severity == severity}


@pytest.mark.parametrize("trt", [10, 11])
def test_clean_qdq_model_passes(trt: int) -> None:
    assert check_onnx(qdq_conv(), trt_version=trt) == []


def test_clean_model_passes_dla() -> None:
    assert check_onnx(qdq_conv(), trt_version=10, dla=0) == []


def test_opset_range_differs_by_version() -> None:
    model = qdq_conv(opset=OPSET_RANGE[10][1] + 1)
    assert rules(check_onnx(model, trt_version=10)) == {"opset"}
    assert check_onnx(model, trt_version=11) == []
    found = check_onnx(qdq_conv(opset=8), trt_version=10)
    assert [str(v) for v in found] == ["error: [opset] model: opset 8 is outside TensorRT 10.x's range 9-20; export with one in it"]


def test_custom_domain_is_an_error() -> None:
    model = qdq_conv(extra_nodes=[helper.make_node("MyOp", ["r"], ["y"], name="custom", domain="com.acme")])
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    assert [(v.rule, v.node, v.message) for v in check_onnx(model)] == [
        ("opset", "model", "custom domain 'com.acme' needs a TensorRT plugin; export standard ONNX ops only"),
        ("op-support", "MyOp 'custom'", "com.acme.MyOp is not in TensorRT 10.x's ONNX operator list (onnx-tensorrt operators.md)"),
    ]


@pytest.mark.parametrize("op", ["Unique", "DynamicQuantizeLinear", "MaxUnpool", "StringNormalizer"])
def test_unsupported_op_is_named(op: str) -> None:
    found = check_onnx(qdq_conv(extra_nodes=[helper.make_node(op, ["r"], ["y"], name="bad_op")]))
    assert [(v.rule, v.node) for v in found] == [("op-support", f"{op} 'bad_op'")]


def test_operator_lists_differ_by_version() -> None:
    # Swish came with the TensorRT 11.0 parser; Conv and Q/DQ are in both.
    assert "Swish" in SUPPORTED_OPS[11] and "Swish" not in SUPPORTED_OPS[10]
    assert {"Conv", "QuantizeLinear", "DequantizeLinear", "Resize", "Clip", "Concat"} <= SUPPORTED_OPS[10]
    model = qdq_conv(opset=24, extra_nodes=[helper.make_node("Swish", ["r"], ["y"], name="swish")])
    assert rules(check_onnx(model, trt_version=11)) == set()
    assert rules(check_onnx(model, trt_version=10)) == {"opset", "op-support"}


def test_resize_mode_restriction() -> None:
    sizes = _init("sizes", np.array([1, C_OUT, 2 * SIZE, 2 * SIZE], np.int64))
    resize = helper.make_node("Resize", ["r", "", "", "sizes"], ["y"], name="up", mode="cubic")
    x, _ = _graph_io()
    found = check_onnx(qdq_conv(extra_nodes=[resize], extra_inits=[sizes]))
    assert [(v.rule, v.node, v.message) for v in found] == [
        ("op-restriction", "Resize 'up'", "Resize mode 'cubic' (use nearest or linear) is not supported by TensorRT")
    ]
    linear = helper.make_node(
        "Resize", ["r", "", "", "sizes"], ["y"], name="up", mode="linear", coordinate_transformation_mode="half_pixel"
    )
    assert check_onnx(qdq_conv(extra_nodes=[linear], extra_inits=[sizes])) == []


def test_runtime_conv_weights_are_an_error() -> None:
    model = qdq_conv()
    w_in = helper.make_tensor_value_info("w_runtime", TensorProto.FLOAT16, [C_OUT, C_OUT, 1, 1])
    model.graph.input.append(w_in)
    model.graph.node[-1].CopyFrom(helper.make_node("Conv", ["r", "w_runtime"], ["y"], name="dyn_conv", kernel_shape=[1, 1]))
    assert [(v.rule, v.node, v.message) for v in check_onnx(model)] == [
        ("op-support", "Conv 'dyn_conv'", "weights are computed at run time; TensorRT needs an initializer (or DQ of one)")
    ]


def test_uint8_zero_point_is_an_error() -> None:
    found = check_onnx(qdq_conv(act_zp=np.uint8(0)))
    assert rules(found) == {"qdq-dtype"} and {v.node for v in found} == {"QuantizeLinear 'q_in'", "DequantizeLinear 'dq_in'"}


def test_missing_zero_point_means_uint8() -> None:
    model = qdq_conv()
    model.graph.node[0].CopyFrom(helper.make_node("QuantizeLinear", ["x", "a_scale"], ["xq"], name="q_in"))
    found = check_onnx(model)
    assert [(v.rule, v.node) for v in found] == [("qdq-dtype", "QuantizeLinear 'q_in'")]


def test_nonzero_zero_point_is_an_error() -> None:
    found = check_onnx(qdq_conv(act_zp=np.int8(3)))
    assert rules(found) == {"qdq-zero-point"} and len(found) == 2


@pytest.mark.parametrize("bad", [0.0, -0.1, np.inf, np.nan])
def test_scale_must_be_positive_finite(bad: float) -> None:
    found = check_onnx(qdq_conv(act_scale=bad))
    assert rules(found) == {"qdq-scale"} and len(found) == 2


def test_weight_scale_with_a_zero_channel() -> None:
    found = check_onnx(qdq_conv(w_scale=np.array([0.01, 0.0, 0.01, 0.01], np.float32)))
    assert [(v.rule, v.node) for v in found] == [("qdq-scale", "DequantizeLinear 'dq_w'")]


def test_weights_must_be_per_channel_axis_0() -> None:
    found = check_onnx(qdq_conv(w_scale=np.full(C_IN, 0.01, np.float32), w_axis=1))
    assert [(v.rule, v.node) for v in found] == [("qdq-weight-axis", "DequantizeLinear 'dq_w'")]
    per_tensor = check_onnx(qdq_conv(w_scale=np.float32(0.01), w_zp=np.int8(0)))
    assert [(v.rule, v.node) for v in per_tensor] == [("qdq-weight-axis", "DequantizeLinear 'dq_w'")]


def test_activations_must_be_per_tensor() -> None:
    model = qdq_conv(act_scale=np.full(C_IN, 0.05, np.float32), act_zp=np.zeros(C_IN, np.int8))
    for node in model.graph.node[:2]:
        node.attribute.append(helper.make_attribute("axis", 1))
    found = check_onnx(model)
    assert rules(found) == {"qdq-activation-per-tensor"} and {v.node for v in found} == {
        "QuantizeLinear 'q_in'",
        "DequantizeLinear 'dq_in'",
    }


def test_dynamic_shape_needs_a_profile() -> None:
    model = qdq_conv(x_shape=["batch", C_IN, SIZE, SIZE])
    found = check_onnx(model)
    assert [(v.rule, v.node) for v in found] == [("static-shape", "input 'x'")]
    profile = {"x": {"min": [1, C_IN, SIZE, SIZE], "opt": [2, C_IN, SIZE, SIZE], "max": [8, C_IN, SIZE, SIZE]}}
    assert check_onnx(model, shapes=profile) == []
    reversed_profile = {"x": {"min": [8, C_IN, SIZE, SIZE], "opt": [2, C_IN, SIZE, SIZE], "max": [1, C_IN, SIZE, SIZE]}}
    assert rules(check_onnx(model, shapes=reversed_profile)) == {"static-shape"}


def test_int64_data_initializer_is_named() -> None:
    # An int64 tensor used as data (not a shape/axes operand) is cast by TensorRT.
    offset = _init("offset_i64", np.array([1], np.int64))
    nodes = [
        helper.make_node("Cast", ["r"], ["ri"], name="to_int", to=TensorProto.INT64),
        helper.make_node("Add", ["ri", "offset_i64"], ["s"], name="add_i64"),
        helper.make_node("Cast", ["s"], ["y"], name="to_float", to=TensorProto.FLOAT),
    ]
    found = check_onnx(qdq_conv(extra_nodes=nodes, extra_inits=[offset]))
    assert [(v.rule, v.node) for v in found] == [("int64-weights", "initializer 'offset_i64'")]
    assert "add_i64" in found[0].message


def test_int64_shape_operands_are_fine_but_not_huge_values() -> None:
    shape = _init("shape", np.array([1, -1], np.int64))
    reshape = [helper.make_node("Reshape", ["r", "shape"], ["y"], name="flat")]
    assert check_onnx(qdq_conv(extra_nodes=reshape, extra_inits=[shape])) == []
    huge = _init("shape", np.array([1, 2**40], np.int64))
    found = check_onnx(qdq_conv(extra_nodes=reshape, extra_inits=[huge]))
    assert [(v.rule, v.node) for v in found] == [("int64-weights", "initializer 'shape'")]


def _dla(model: onnx.ModelProto, trt: int = 10) -> list[Violation]:
    return check_onnx(model, trt_version=trt, dla=0)


def test_dla_kernel_and_dilation_limits() -> None:
    big = _dla(qdq_conv(kernel=33, conv_attrs={"pads": [1, 1, 1, 1]}))
    assert [(v.rule, v.node, v.severity, v.message) for v in big] == [
        ("dla-layer", "Conv 'conv'", "warning", f"kernel [33, 33] is outside DLA's range 1-32; {GPU}")
    ]
    dilated = _dla(qdq_conv(conv_attrs={"dilations": [40, 40], "pads": [40, 40, 40, 40]}))
    assert [(v.rule, v.node, v.severity, v.message) for v in dilated] == [
        ("dla-layer", "Conv 'conv'", "warning", f"dilation [40, 40] is outside DLA's range 1-32; {GPU}"),
        ("dla-layer", "Conv 'conv'", "warning", f"pad [40, 40, 40, 40] is outside DLA's range 0-31; {GPU}"),
    ]
    assert check_onnx(qdq_conv(kernel=33, conv_attrs={"pads": [1, 1, 1, 1]})) == []  # GPU only: no DLA rules


def test_dla_padding_must_be_smaller_than_kernel_span() -> None:
    assert _dla(qdq_conv(conv_attrs={"dilations": [6, 6], "pads": [6, 6, 6, 6]})) == []  # span 13 > pad 6
    found = _dla(qdq_conv(kernel=1, conv_attrs={"pads": [1, 1, 1, 1]}))
    assert [(v.rule, v.node, v.message) for v in found] == [
        ("dla-layer", "Conv 'conv'", f"padding [1, 1, 1, 1] must be smaller than the kernel span [1, 1] on DLA; {GPU}")
    ]


def test_dla_global_pool_window_limit() -> None:
    pool = [helper.make_node("GlobalAveragePool", ["r"], ["y"], name="gap")]
    model = qdq_conv(extra_nodes=pool)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, C_OUT, 1, 1]))
    assert check_onnx(model) == []
    found = _dla(model)  # 8x8 window: at DLA's limit of 8
    assert found == []
    wide = qdq_conv(extra_nodes=pool, x_shape=[1, C_IN, SIZE, 2 * SIZE])
    wide.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, C_OUT, 1, 1]))
    found = _dla(wide)
    assert [(v.rule, v.node, v.message) for v in found] == [
        ("dla-layer", "GlobalAveragePool 'gap'", f"pooling window [8, 16] is outside DLA's range 1-8; {GPU}")
    ]


def test_dla_resize_scale_must_be_integer() -> None:
    def resize(out_hw: int) -> onnx.ModelProto:
        sizes = _init("sizes", np.array([1, C_OUT, out_hw, out_hw], np.int64))
        node = helper.make_node(
            "Resize", ["r", "", "", "sizes"], ["y"], name="up", mode="linear", coordinate_transformation_mode="half_pixel"
        )
        model = qdq_conv(extra_nodes=[node], extra_inits=[sizes])
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, C_OUT, out_hw, out_hw]))
        return model

    assert _dla(resize(4 * SIZE)) == []
    found = _dla(resize(3 * SIZE // 2))
    assert [(v.rule, v.node, v.message) for v in found] == [
        ("dla-layer", "Resize 'up'", f"scales [1.5, 1.5] must be integers in 1-32 on DLA; {GPU}")
    ]


def test_dla_unsupported_layer_falls_back() -> None:
    shape = _init("shape", np.array([1, C_OUT, SIZE, SIZE], np.int64))
    found = _dla(qdq_conv(extra_nodes=[helper.make_node("Expand", ["r", "shape"], ["y"], name="bcast")], extra_inits=[shape]))
    assert [(v.rule, v.node, v.severity) for v in found] == [("dla-layer", "Expand 'bcast'", "warning")]


def test_dla_dynamic_shape_is_an_error_and_trt11_is_a_warning() -> None:
    profile = {"x": {"min": [1, C_IN, SIZE, SIZE], "opt": [1, C_IN, SIZE, SIZE], "max": [4, C_IN, SIZE, SIZE]}}
    found = check_onnx(qdq_conv(x_shape=["n", C_IN, SIZE, SIZE]), dla=0, shapes=profile)
    assert [(v.rule, v.severity) for v in found] == [("dla-shape", "error")]
    found11 = _dla(qdq_conv(), trt=11)
    assert [(v.rule, v.node, v.severity, v.message) for v in found11] == [
        (
            "dla",
            "config",
            "warning",
            "TensorRT 11 has DLA only from 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+; on JetPack 6 use TensorRT 10 (10.7 last with DLA)",
        )
    ]


def test_violation_is_one_line_naming_node_and_rule() -> None:
    v = check_onnx(qdq_conv(act_zp=np.int8(5)))[0]
    assert str(v) == "error: [qdq-zero-point] QuantizeLinear 'q_in': zero point [5] is not 0; TensorRT needs symmetric INT8"


def test_errors_come_before_warnings() -> None:
    shape = _init("shape", np.array([1, C_OUT, SIZE, SIZE], np.int64))
    model = qdq_conv(act_zp=np.int8(1), extra_nodes=[helper.make_node("Expand", ["r", "shape"], ["y"], name="e")], extra_inits=[shape])
    # The Expand first in the graph: its warning still comes after both errors.
    model.graph.node.insert(0, model.graph.node.pop())
    assert [(v.severity, v.node) for v in _dla(model)] == [
        ("error", "QuantizeLinear 'q_in'"),
        ("error", "DequantizeLinear 'dq_in'"),
        ("warning", "Expand 'e'"),
    ]


def test_bad_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx file" * 10)
    cases = [
        ((tmp_path / "missing.onnx",), {}, CheckpointError, MISSING.format(tmp_path / "missing.onnx")),
        ((junk,), {}, CheckpointError, f"'{junk}' is not a readable ONNX model (DecodeError); export it again"),
        ((qdq_conv(),), {"trt_version": 9}, ConfigError, "--trt-version 9 is not supported; use 10 or 11"),
        ((qdq_conv(), "openvino"), {}, ConfigError, "preflight target 'openvino' has no rules; use --target jetson"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error) as info:
            check_onnx(*args, **kwargs)
        assert str(info.value) == message


def test_check_cli_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(qdq_conv(), str(good))
    onnx.save(qdq_conv(act_zp=np.int8(2)), str(bad))
    cmd = [sys.executable, "-m", "edgeseg", "check"]
    ok = subprocess.run([*cmd, str(good), "--target", "jetson"], capture_output=True, text=True, cwd=REPO)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: 0 errors, 0 warnings (TensorRT 10.x)\n", "")
    fail = subprocess.run([*cmd, str(bad), "--target", "jetson", "--dla", "0"], capture_output=True, text=True, cwd=REPO)
    zero_point = "zero point [2] is not 0; TensorRT needs symmetric INT8"
    assert (fail.returncode, fail.stdout.splitlines(), fail.stderr) == (
        1,
        [
            f"error: [qdq-zero-point] QuantizeLinear 'q_in': {zero_point}",
            f"error: [qdq-zero-point] DequantizeLinear 'dq_in': {zero_point}",
            f"{bad}: 2 errors, 0 warnings (TensorRT 10.x, DLA 0)",
        ],
        "",
    )
    missing = subprocess.run([*cmd, str(tmp_path / "nope.onnx")], capture_output=True, text=True, cwd=REPO)
    assert (missing.returncode, missing.stdout, missing.stderr) == (2, "", f"error: {MISSING.format(tmp_path / 'nope.onnx')}\n")


def test_fp32_float_regions_of_an_int8_graph_are_a_warning() -> None:
    # The same Q/DQ conv with FP32 scales, bias and activations: both DQ, Conv and Relu compute in FP32.
    found = check_onnx(qdq_conv(float_type=np.float32, opset=17))
    assert [(v.rule, v.node, v.severity) for v in found] == [("fp32-regions", "DequantizeLinear 'dq_in'", "warning")]
    assert found[0].message.startswith("4 layers of this INT8 graph compute in FP32")
    # FP32 model I/O around an FP16 graph (casts only) is fine, and a float graph without Q/DQ is not an INT8 graph.
    model = qdq_conv(extra_nodes=[helper.make_node("Cast", ["r"], ["y"], name="to_fp32", to=TensorProto.FLOAT)])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    assert check_onnx(model) == []
    x, y = _graph_io()
    plain = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    assert check_onnx(plain) == []
