"""The Jetson INT8 bundle stores weights as int8 initializers: identical outputs in onnxruntime,
about a quarter of the bytes, every weight int8, and a fold that changes a value is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_targets_runtime import _checkpoints, _export

from edgeseg.errors import NumericalError
from edgeseg.export import qdq_weights
from edgeseg.export.common import onnx_session
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
