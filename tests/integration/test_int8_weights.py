"""The Jetson INT8 bundle stores weights as int8 initializers: identical outputs in onnxruntime,
about a quarter of the bytes, every weight int8, and a fold that changes a value is refused. Its
float regions are FP16 (no layer computes in FP32), agreeing with PyTorch's fake-quant model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_targets_runtime import SIZE, _checkpoints, _export, _torch_logits

from edgeseg.errors import NumericalError
from edgeseg.export import qdq_weights, tensorrt
from edgeseg.export.common import INT8_AGREEMENT, onnx_session, verification_frames
from edgeseg.export.io_spec import IOSpec, feed
from edgeseg.export.preflight import check_onnx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qdq_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ONNX target's INT8 file: torch's Q/DQ export, float weights + QuantizeLinear."""
    folder = tmp_path_factory.mktemp("q")
    _, ptq = _checkpoints(folder, 16)
    out, _ = _export(ptq, "onnx", "int8", folder / "out")
    return out / "model.onnx"


def _inputs(n: int = 3) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal((1, 3, 64, 64), dtype=np.float32) for i in range(n)]


def test_fold_is_exact_and_every_weight_int8(qdq_onnx: Path, tmp_path: Path) -> None:
    before = onnx.load(str(qdq_onnx))
    assert any(w.severity == "warning" and w.rule == "qdq-float-weights" for w in check_onnx(before))
    info = qdq_weights.int8_weights(qdq_onnx, tmp_path / "folded.onnx", _inputs())
    after = onnx.load(str(tmp_path / "folded.onnx"))
    inits = {t.name: t for t in after.graph.initializer}
    convs = [n for n in after.graph.node if n.op_type == "Conv"]
    producer = {o: n for n in after.graph.node for o in n.output}
    for conv in convs:  # weight = DequantizeLinear(int8 initializer)
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.INT8
    assert info["weights_folded"] == len(convs) > 60
    assert not [n for n in after.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
    assert info["bytes_after"] < 0.35 * info["bytes_before"]
    assert not [w for w in check_onnx(after) if w.rule == "qdq-float-weights"]
    # Independent of the module's own check: other inputs, the two files, bit for bit.
    a, b = onnx_session(qdq_onnx), onnx_session(tmp_path / "folded.onnx")
    for x in _inputs(5)[3:]:
        np.testing.assert_array_equal(a.run(None, {"input": x})[0], b.run(None, {"input": x})[0])


def test_a_fold_that_changes_a_weight_is_refused(qdq_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = qdq_weights.fold_weights

    def negated(model: object, feed: dict) -> tuple[object, int]:
        folded, count = real(model, feed)
        w = next(t for t in folded.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4)
        values = onnx.numpy_helper.to_array(w).copy()
        values = np.clip(-values.astype(np.int16), -127, 127).astype(np.int8)  # one conv's weights, sign flipped
        w.CopyFrom(onnx.numpy_helper.from_array(values, w.name))
        return folded, count

    monkeypatch.setattr(qdq_weights, "fold_weights", negated)
    with pytest.raises(NumericalError, match="int8 weight initializers differs from its source"):
        qdq_weights.int8_weights(qdq_onnx, tmp_path / "bad.onnx", _inputs())
    assert not (tmp_path / "bad.onnx").exists()


def test_jetson_int8_bundle_records_the_fold(tmp_path: Path) -> None:
    _, ptq = _checkpoints(tmp_path, 16)
    folder, meta = _export(ptq, "jetson", "int8", tmp_path / "out")
    w = meta["int8_weights"]
    assert w["weights_folded"] > 60 and w["bytes_after"] < 0.35 * w["bytes_before"]
    assert (folder / "model.onnx").stat().st_size < 0.35 * w["bytes_before"]  # wrapped for image in, labels out after the fold
    assert w["data"] == "synthetic val, 4 images" and w["checked_images"] == 4


def _fp32_layers(path: Path) -> list[str]:
    """Nodes of an ONNX file that compute (not a Cast or Constant) with an FP32 output."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    fp32 = {v.name for v in [*model.graph.value_info, *model.graph.output] if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return [n.name for n in model.graph.node if n.op_type not in ("Cast", "Constant") and fp32 & set(n.output)]


def test_jetson_int8_float_regions_are_fp16_and_agree_with_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ptq = _checkpoints(tmp_path, 16)
    folder, meta = _export(ptq, "jetson", "int8", tmp_path / "out", output="logits")
    model = onnx.load(str(folder / "model.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == tensorrt.FP16_QDQ_OPSET
    assert _fp32_layers(folder / "model.onnx") == []
    fp32_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert {n.op_type for n in model.graph.node if fp32_inits & set(n.input)} <= {"Resize"}  # FP32 only where ONNX demands it
    regions = meta["float_regions"]
    assert regions["precision"] == "fp16" and min(regions["agreement_vs_fp32_regions"], regions["agreement_vs_torch"]) >= INT8_AGREEMENT
    assert "fp32-regions" not in (folder / "preflight.txt").read_text()
    # Independent of the export's own check: the bundle (FP32 logits out) against torch's fake-quant model.
    frames, _ = verification_frames(meta, 4)
    norm = meta["normalization"]
    images = [feed(f, IOSpec(), SIZE, norm["mean"], norm["std"]) for f in frames]
    sess = onnx_session(folder / "model.onnx", literal=True)
    got = np.concatenate(
        [
            sess.run(None, {sess.get_inputs()[0].name: feed(f, IOSpec("image", "logits"), SIZE, norm["mean"], norm["std"])})[0]
            for f in frames
        ]
    )
    assert got.dtype == np.float32
    assert (got.argmax(1) == _torch_logits(ptq, images, quantized=True).argmax(1)).mean() >= INT8_AGREEMENT

    # Asked for FP32 regions: its own folder, and preflight says what that costs.
    folder32, meta32 = _export(ptq, "jetson", "int8", tmp_path / "out", output="logits", float_regions="fp32")
    assert folder32.name.endswith("_fp32-regions") and meta32["float_regions"]["precision"] == "fp32"
    assert _fp32_layers(folder32 / "model.onnx") and "fp32-regions" in (folder32 / "preflight.txt").read_text()

    # An FP16 graph that disagrees is refused, and names the way out.
    monkeypatch.setattr(tensorrt, "_torch_agreement", lambda *a: 0.5)
    with pytest.raises(NumericalError, match="--float-regions fp32"):
        _export(ptq, "jetson", "int8", tmp_path / "bad", output="logits")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
