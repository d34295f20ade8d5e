"""OpenVINO lowering of signed INT8 quantizers on non-negative tensors to u8 (export/openvino.py).

Each graph is a hand-built Q/DQ ONNX; the reference is numpy on the same input: the signed grid
(step amax/127, what onnxruntime runs from the ONNX) and the unsigned one (step top/255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")

from edgeseg.export.openvino_ir import ir_from_onnx, unsigned_activations  # noqa: E402

C = 4


def qdq(name: str, x: str, scale: float, nodes: list, inits: list) -> str:
    inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"), numpy_helper.from_array(np.array(0, np.int8), f"{name}_z")]
    nodes += [
        helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"]),
    ]
    return f"{name}_dq"


def identity_conv(name: str, x: str, channels: int, nodes: list, inits: list) -> str:
    """A 1x1 convolution with weights exactly 1 (int8 127 at scale 1/127) behind a per-channel Q/DQ."""
    w = np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    inits += [
        numpy_helper.from_array(w, f"{name}_w"),
        numpy_helper.from_array(np.full(channels, 1 / 127, np.float32), f"{name}_ws"),
        numpy_helper.from_array(np.zeros(channels, np.int8), f"{name}_wz"),
    ]
    nodes += [
        helper.make_node("QuantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wq"], axis=0),
        helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_ws", f"{name}_wz"], [f"{name}_wdq"], axis=0),
        helper.make_node("Conv", [x, f"{name}_wdq"], [f"{name}_y"]),
    ]
    return f"{name}_y"


def save(path: Path, nodes: list, inits: list, out: str, channels: int) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, channels, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_ir(xml: Path, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled({0: x})[0])


def grid(x: np.ndarray, step: float, low: int, high: int) -> np.ndarray:
    return np.clip(np.round(x / step), low, high) * step


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).uniform(-8, 8, (1, C, 8, 8)).astype(np.float32)


def test_relu_quantizer_gets_the_full_unsigned_range(tmp_path: Path, x: np.ndarray) -> None:
    nodes: list = [helper.make_node("Relu", ["x"], ["r"])]
    inits: list = []
    amax = 5.0  # values above it are clipped, as in the signed grid
    y = identity_conv("c", qdq("a", "r", amax / 127, nodes, inits), C, nodes, inits)
    path = save(tmp_path / "relu.onnx", nodes, inits, y, C)
    signed = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(signed, grid(np.maximum(x, 0), amax / 127, -128, 127), atol=1e-5)

    xml, lowered = ir_from_onnx(path, tmp_path, precision="int8")
    assert lowered == 1
    np.testing.assert_allclose(run_ir(xml, x), grid(np.maximum(x, 0), amax / 255, 0, 255), atol=1e-5)
    (tmp_path / "exact").mkdir()
    exact, none = ir_from_onnx(path, tmp_path / "exact", precision="int8", exact_grid=True)
    assert none == 0
    np.testing.assert_allclose(run_ir(exact, x), signed, atol=1e-5)


def test_relu6_quantizer_spends_its_codes_below_the_clamp(tmp_path: Path, x: np.ndarray) -> None:
    nodes: list = []
    inits = [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes.append(helper.make_node("Clip", ["x", "lo", "hi"], ["r"]))
    amax = 7.0  # calibrated above the clamp (max of a ReLU6 output is 6)
    y = identity_conv("c", qdq("a", "r", amax / 127, nodes, inits), C, nodes, inits)
    xml, lowered = ir_from_onnx(save(tmp_path / "relu6.onnx", nodes, inits, y, C), tmp_path, precision="int8")
    assert lowered == 1
    np.testing.assert_allclose(run_ir(xml, x), grid(np.clip(x, 0, 6), 6.0 / 255, 0, 255), atol=1e-5)


def test_signed_tensors_and_their_concat_partners_stay_signed(tmp_path: Path, x: np.ndarray) -> None:
    nodes: list = [helper.make_node("Relu", ["x"], ["r"])]
    inits: list = []
    s = 8.0 / 127
    a = qdq("a", "r", s, nodes, inits)  # non-negative
    b = qdq("b", "x", s, nodes, inits)  # signed: the shared-scale concat keeps both signed
    nodes.append(helper.make_node("Concat", [a, b], ["cat"], axis=1))
    y = identity_conv("c", "cat", 2 * C, nodes, inits)
    path = save(tmp_path / "cat.onnx", nodes, inits, y, 2 * C)
    model = ov.convert_model(str(path))
    assert unsigned_activations(model) == 0
    expected = np.concatenate([grid(np.maximum(x, 0), s, -128, 127), grid(x, s, -128, 127)], axis=1)
    ov.save_model(model, str(tmp_path / "cat.xml"))
    np.testing.assert_allclose(run_ir(tmp_path / "cat.xml", x), expected, atol=1e-5)


def test_non_negative_concat_is_lowered_together(tmp_path: Path, x: np.ndarray) -> None:
    nodes: list = [helper.make_node("Relu", ["x"], ["r"])]
    inits = [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(2.5, np.float32), "hi")]
    nodes.append(helper.make_node("Clip", ["x", "lo", "hi"], ["r6"]))
    s = 4.0 / 127
    a = qdq("a", "r", s, nodes, inits)
    b = qdq("b", "r6", s, nodes, inits)  # its clamp (2.5) is below amax (4): the pair keeps amax
    nodes.append(helper.make_node("Concat", [a, b], ["cat"], axis=1))
    y = identity_conv("c", "cat", 2 * C, nodes, inits)
    xml, lowered = ir_from_onnx(save(tmp_path / "cat2.onnx", nodes, inits, y, 2 * C), tmp_path, precision="int8")
    assert lowered == 2
    expected = np.concatenate([grid(np.maximum(x, 0), 4.0 / 255, 0, 255), grid(np.clip(x, 0, 2.5), 4.0 / 255, 0, 255)], axis=1)
    np.testing.assert_allclose(run_ir(xml, x), expected, atol=1e-5)


def test_float_and_fp16_irs_are_not_touched(tmp_path: Path) -> None:
    nodes: list = [helper.make_node("Relu", ["x"], ["r"])]
    inits: list = []
    y = identity_conv("c", qdq("a", "r", 5.0 / 127, nodes, inits), C, nodes, inits)
    _, lowered = ir_from_onnx(save(tmp_path / "m.onnx", nodes, inits, y, C), tmp_path, precision="fp32")
    assert lowered == 0
