"""ONNX export: FP32 matches PyTorch, INT8 is clean Q/DQ that matches the fake-quant model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_quant import batches, loop_over, tiny_model  # noqa: E402

from edgeseg.cli import app  # noqa: E402
from edgeseg.config import recipe_from_dict  # noqa: E402
from edgeseg.data.classes import SYNTHETIC  # noqa: E402
from edgeseg.errors import CheckpointError  # noqa: E402
from edgeseg.export.base import ExportRequest, get_target  # noqa: E402
from edgeseg.export.onnx_export import check_qdq, constants, export_onnx  # noqa: E402
from edgeseg.models import HEADS  # noqa: E402
from edgeseg.quant import QuantConv2d, TensorQuantizer, quant_state, quantize  # noqa: E402
from edgeseg.train.checkpoint import save_checkpoint  # noqa: E402

SIZE = (64, 64)


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def torch_run(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_fp32_onnx_matches_torch(tmp_path, head: str, output_stride: int) -> None:  # noqa: ANN001
    model = tiny_model(head, output_stride)
    report = export_onnx(model, tmp_path / "m.onnx", input_size=SIZE, meta={"output_stride": output_stride})
    assert report["opset"] == 17 and report["max_abs_diff"] < 1e-4
    x = batches(1, seed=11)[0][:1].numpy()
    assert np.abs(ort_run(tmp_path / "m.onnx", x) - torch_run(model, x)).max() < 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert not [n for n in graph.graph.node if "Quantize" in n.op_type]
    # The rules fire on a float graph: each conv lacks both its weight and its input dequantize.
    assert check_qdq(graph) == [
        f"Conv '{n.name}' {what}"
        for n in graph.graph.node
        if n.op_type == "Conv"
        for what in ("weight is not behind a per-channel (axis 0) DequantizeLinear", "input is not behind a DequantizeLinear")
    ]


@pytest.fixture(scope="module", params=["deeplabv3plus", "deeplabv3plus_s2", "deeplabv3plus_dw"])
def int8(request, tmp_path_factory):  # noqa: ANN001, ANN201
    model = tiny_model(request.param)
    q = quantize(model, {"method": "percentile"}, loop_over(batches()))
    path = tmp_path_factory.mktemp("int8") / "m.onnx"
    meta = {"precision": "int8", "classes": {"names": ["a", "b"]}, "output_stride": 16}
    report = export_onnx(q, path, input_size=SIZE, meta=meta)
    return q.eval(), path, onnx.load(str(path)), report


def test_every_conv_weight_sits_behind_a_per_channel_dequantize(int8) -> None:  # noqa: ANN001
    q, _, proto, report = int8
    const = constants(proto.graph)
    producer = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in q.modules())
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert {a.name: a.i for a in dq.attribute}.get("axis") == 0
        out_channels = const[dq.input[1]].shape
        # The explicit-quantization form TensorRT reads: Q/DQ of the float weight, which onnxsim
        # must leave alone (neither folded into a float constant nor pre-quantized to int8).
        src = producer[dq.input[0]]
        assert src.op_type == "QuantizeLinear" and src.input[0] in const
        weight = const[src.input[0]]
        assert weight.dtype == np.float32 and out_channels == (weight.shape[0],)
        src = producer[conv.input[0]]
        if src.op_type == "Concat":  # an INT8 concat: every input dequantized with one scale
            feeds = [producer[i] for i in src.input]
            feeds = [producer[f.input[0]] if f.op_type == "Expand" else f for f in feeds]
            assert {f.op_type for f in feeds} == {"DequantizeLinear"}
            assert len({float(const[f.input[1]]) for f in feeds}) == 1
        else:
            assert src.op_type == "DequantizeLinear"
    assert report["qdq_problems"] == [] and check_qdq(proto) == []


def test_both_residual_add_inputs_are_quantized(int8) -> None:  # noqa: ANN001
    _, _, proto, _ = int8
    producer = {o: n for n in proto.graph.node for o in n.output}
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 10  # MobileNetV2's residual blocks
    for add in adds:
        assert [producer[i].op_type for i in add.input] == ["DequantizeLinear", "DequantizeLinear"]


def expected_qdq_pairs(q: torch.nn.Module) -> int:
    """Q/DQ pairs the INT8 graph must hold, counted on the torch model: one per conv weight, and one
    per activation quantizer call on a distinct (tensor, range). A shared quantizer (a concat's)
    is one pair per input; two quantizers of one tensor with one range are one pair in ONNX
    (onnxsim merges identical nodes: decoder.low_q and encoder.features.4.in_q quantize the same
    stride-4 tensor and calibrate to the same range)."""
    calls: list[tuple[torch.Tensor, float]] = []  # the inputs are kept alive, so `is` tells them apart

    def record(module: TensorQuantizer, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        calls.append((inputs[0], float(module.amax)))

    hooks = [m.register_forward_hook(record) for m in q.modules() if isinstance(m, TensorQuantizer)]
    with torch.no_grad():
        q.eval()(torch.zeros(1, 3, *SIZE))
    for h in hooks:
        h.remove()
    distinct: list[tuple[torch.Tensor, float]] = []
    for x, amax in calls:
        if not any(x is y and amax == b for y, b in distinct):
            distinct.append((x, amax))
    convs = sum(isinstance(m, QuantConv2d) for m in q.modules())
    # width 0.35 DeepLabV3+: 73 quantizers, 5 extra concat calls. The stride-2 stage adds 4 convs
    # and 5 calls (skip, its concat's two inputs, the separable conv's two outputs); the skip's
    # quantizer reads the tensor encoder.features.2.in_q reads, with the same range.
    # deeplabv3plus_dw's decoder reads a depthwise output the encoder quantized already: no low_q
    # (one call fewer, and the one it duplicated is gone).
    want = {"deeplabv3plus": (78, 77, 66), "deeplabv3plus_s2": (83, 81, 70), "deeplabv3plus_dw": (77, 77, 66)}[q.head_name]
    assert (len(calls), len(distinct), convs) == want
    return convs + len(distinct)


def test_all_zero_points_are_int8_zero(int8) -> None:  # noqa: ANN001
    q, _, proto, _ = int8
    const = constants(proto.graph)
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == 2 * expected_qdq_pairs(q)
    for node in qdq:
        zp = const[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any()


def test_scales_are_amax_over_127(int8) -> None:  # noqa: ANN001
    q, _, proto, _ = int8
    const = constants(proto.graph)
    first = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert float(const[first.input[1]]) == pytest.approx(float(q.encoder.input_q.amax) / 127, rel=1e-6)
    conv_w = q.encoder.features[0][0].weight.detach()
    want = conv_w.abs().amax(dim=(1, 2, 3)).numpy() / 127
    scales = [v for v in const.values() if v.shape == want.shape and np.allclose(v, want, rtol=1e-6)]
    assert scales, "the first conv's per-channel weight scales are not in the graph"


def test_int8_onnxruntime_matches_torch_fake_quant(int8) -> None:  # noqa: ANN001
    q, path, _, report = int8
    assert report["argmax_agreement"] >= 0.99
    x = torch.cat(batches(2, seed=21)).numpy()
    ref, got = torch_run(q, x), ort_run(path, x[:1])
    agreement = (got.argmax(1) == ref[:1].argmax(1)).mean()
    assert agreement >= 0.99
    assert np.abs(got - ref[:1]).max() < 0.05 * np.abs(ref).max()


def test_metadata_props_are_json(int8) -> None:  # noqa: ANN001
    _, _, proto, _ = int8
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["precision"] == "int8"
    assert json.loads(props["classes"]) == {"names": ["a", "b"]}
    assert json.loads(props["output_stride"]) == 16


# --- the onnx target and the export command ------------------------------------------------


def tiny_recipe() -> object:
    return recipe_from_dict(
        {
            "name": "tiny",
            "data": {"format": "synthetic", "synthetic_size": [64, 64], "crop_size": [64, 64]},
            "model": {"width_mult": 0.35},
            "export": {"input_size": [64, 64]},
        }
    )


def test_int8_export_of_an_uncalibrated_checkpoint_says_how_to_fix(tmp_path) -> None:  # noqa: ANN001
    save_checkpoint(tmp_path / "fp32.pt", model=tiny_model(), recipe=tiny_recipe(), classes=SYNTHETIC)
    request = ExportRequest(checkpoint=tmp_path / "fp32.pt", precision="int8", out_dir=tmp_path)
    with pytest.raises(CheckpointError) as info:
        get_target("onnx").export(request, tmp_path / "art")
    ckpt = tmp_path / "fp32.pt"
    assert str(info.value) == (
        f"checkpoint '{ckpt}' has no INT8 ranges; run 'edgeseg calibrate {ckpt} --calib LIST --out ptq.pt' and export ptq.pt, "
        "or train with QAT (edgeseg train RECIPE --qat)"
    )


def test_export_command_int8_dynamic_batch_and_runner(tmp_path) -> None:  # noqa: ANN001
    q = quantize(tiny_model(), {"method": "max"}, loop_over(batches()))
    save_checkpoint(
        tmp_path / "ptq.pt",
        model=q,
        recipe=tiny_recipe(),
        classes=SYNTHETIC,
        quant=quant_state(q),
        quant_meta={"method": "max", "calib_list": "test", "num_images": 6, "qat": False},
    )
    args = [
        "export",
        str(tmp_path / "ptq.pt"),
        "--target",
        "onnx",
        "--precision",
        "int8",
        "--dynamic-batch",
        "--out",
        str(tmp_path / "export"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    folder = next((tmp_path / "export").iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["precision"] == "int8" and meta["quant"]["method"] == "max" and meta["input_size"] == [64, 64]
    loaded = get_target("onnx").load(folder, meta)
    assert loaded.runtime == "onnxruntime" and loaded.static_batch is None  # dynamic batch
    runner = loaded.runner
    x = torch.cat(batches(1, seed=31)).numpy()  # batch 2 through a dynamic-batch model
    got, ref = runner.run(x), torch_run(q.eval(), x)
    assert got.shape == (2, 5, 64, 64)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(folder / "model.onnx")).graph.initializer if len(i.dims) == 4]
    assert len(weights) == sum(isinstance(m, torch.nn.Conv2d) for m in q.modules())
    assert {w.dtype for w in weights} == {np.dtype(np.float32)}  # float weights behind their Q/DQ, as in the int8 graph above
