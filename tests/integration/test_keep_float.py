"""Mixed-precision INT8 exports (edgeseg export --keep-float K / --max-drop D, edgeseg.export.mixed).

A tiny PTQ model (4 classes, width 0.35, OS16, 64x64, synthetic scenes) is exported with the two
layers a hand-made sensitivity file ranks first kept float, for every target that converts here:
the Q/DQ ONNX (onnx, jetson), the OpenVINO IR and the Core ML package. Each graph is read back
here with the runtime's own API, independently of edgeseg's read-back, and must keep exactly the
convolutions the model's structure says in float (the reference, FLOAT_CONVS, is written by hand
from models/heads.py) and every other one INT8 in weights and input. The artifact's own
verification (edgeseg.export.mixed.verify_artifact) must pass, and fire on a meta.json that lists
one more layer float than the graph has. --max-drop picks the layers of layers_for_drop's rule,
worked out by hand on the file's curve; every bad input is one error line.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from edgeseg import cli
from edgeseg.config import recipe_from_dict
from edgeseg.data import open_source
from edgeseg.data.classes import ClassInfo
from edgeseg.data.preprocess import preprocess
from edgeseg.errors import CheckpointError, ConfigError, TargetError
from edgeseg.export.artifacts import export_artifact
from edgeseg.export.base import ExportRequest
from edgeseg.export.mixed import resolve
from edgeseg.export.mixed_verify import verify_artifact
from edgeseg.models import build_model
from edgeseg.quant import QuantConv2d, quant_state, quantize
from edgeseg.quant.data import array_loop
from edgeseg.train.checkpoint import file_hash, load_checkpoint, model_from_checkpoint, save_checkpoint
from edgeseg.train.sensitivity import layers_of

pytestmark = pytest.mark.integration
SIZE = (64, 64)
SYNTH = {"num_train": 8, "num_val": 4, "size": list(SIZE), "seed": 0}
CLASSES = ClassInfo(("sky", "road", "car", "tree"), ((128, 128, 128), (128, 64, 128), (64, 0, 128), (128, 128, 0)))
# The hand-made ranking: these first, then every other layer with no gain.
RANKED = ["decoder.aspp.in_q", "decoder.cat_q", "encoder.features.3.out_q"]
TOP2 = RANKED[:2]
# What keeping TOP2 float leaves float, by models/heads.py: ASPP's input is read by the 1x1 branch
# and the three atrous depthwise convs; the decoder's concat quantizer feeds the first fuse conv,
# whose input is then float, so its weights stay float too (no weight-only INT8).
ASPP_CONVS = {"decoder.aspp.branch1x1.0", "decoder.aspp.atrous.0.0.0", "decoder.aspp.atrous.1.0.0", "decoder.aspp.atrous.2.0.0"}
FLOAT_CONVS = ASPP_CONVS | {"decoder.fuse.0.0.0"}
FLOAT_INPUTS = FLOAT_CONVS  # the convs whose input is float: the same five
# The curve of the file: FP32 60, INT8 45; keeping the best 1, 2, 3 layers float gives 50, 54, 58.5.
FLOAT_MIOU, INT8_MIOU, CURVE = 60.0, 45.0, [50.0, 54.0, 58.5]
TARGETS = ["onnx", "jetson", "openvino", "coreml"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An FP32 and a PTQ checkpoint of the tiny model, its layer names, and the sensitivity file."""
    folder = tmp_path_factory.mktemp("keep_float")
    recipe = recipe_from_dict(
        {
            "name": "keep_float",
            "model": {"width_mult": 0.35, "output_stride": 16},
            "data": {"format": "synthetic", "synthetic_num_train": 8, "synthetic_num_val": 4, "synthetic_size": list(SIZE)},
            "quant": {"calib_num_images": 8},
            "export": {"input_size": list(SIZE)},
        }
    )
    torch.manual_seed(0)
    model = build_model(num_classes=4, output_stride=16, width_mult=0.35)
    source = open_source("synthetic", None, "train", SYNTH)
    batch = torch.from_numpy(np.concatenate([preprocess(source.load(i)[0], SIZE) for i in range(4)]))
    with torch.no_grad():  # BatchNorm statistics of real scenes, so activations have real ranges
        model.train()
        for _ in range(3):
            model(batch)
    model.eval().set_input_size(SIZE)
    save_checkpoint(folder / "fp32.pt", model=model, recipe=recipe, classes=CLASSES)
    q = quantize(model, {"method": "percentile", "percentile": 99.99}, array_loop(lambda i: source.load(i)[0], len(source), SIZE))
    meta = {"method": "percentile", "calib_list": "synthetic:train", "num_images": 8, "qat": False}
    save_checkpoint(folder / "ptq.pt", model=q, recipe=recipe, classes=CLASSES, quant=quant_state(q), quant_meta=meta)
    names = [layer.name for layer in layers_of(q, torch.zeros(1, 3, *SIZE))]
    order: list[tuple[str, tuple[int, ...]]] = []  # convs in execution order, with their weight shapes
    hooks = [
        m.register_forward_pre_hook(lambda mod, _i, n=n: order.append((n, tuple(mod.weight.shape))))
        for n, m in q.named_modules()
        if isinstance(m, QuantConv2d)
    ]
    with torch.no_grad():
        q(torch.zeros(1, 3, *SIZE))
    for h in hooks:
        h.remove()
    sens = folder / "sensitivity.json"
    sens.write_text(json.dumps(sensitivity_file(names, sha=file_hash(folder / "ptq.pt"))))
    return {"dir": folder, "ptq": folder / "ptq.pt", "fp32": folder / "fp32.pt", "names": names, "order": order, "sens": sens}


def sensitivity_file(names: list[str], *, sha: str | None) -> dict[str, Any]:
    """What `edgeseg sensitivity --json` writes, by hand: RANKED first, then the rest."""
    ranked = RANKED + [n for n in names if n not in RANKED]
    gains = [8.0, 4.0, 2.0] + [0.0] * (len(ranked) - 3)
    layers = [{"name": n, "convs": [], "miou": INT8_MIOU + g, "gain": g, "per_class_iou": {"sky": None}} for n, g in zip(ranked, gains)]
    curve = [{"k": k + 1, "miou": m, "layers": ranked[: k + 1]} for k, m in enumerate(CURVE)]
    return {
        "images": 4, "float_miou": FLOAT_MIOU, "int8_miou": INT8_MIOU, "float_per_class": {}, "int8_per_class": {},
        "layers": layers, "cumulative": curve, "seconds": 1.0, "checkpoint": "ptq.pt", "checkpoint_sha256": sha,
    }  # fmt: skip


@pytest.fixture(scope="module")
def artifacts(world: dict[str, Any]) -> dict[str, Path]:
    """Each target exported with --keep-float 2 and the sensitivity file (its verification inside)."""
    out = {}
    for target in TARGETS:
        request = ExportRequest(
            checkpoint=world["ptq"], out_dir=world["dir"] / "export", options={"keep_float": 2, "sensitivity": world["sens"]}
        )
        folder = export_artifact(request, target).folder
        assert folder is not None
        out[target] = folder
    return out


# --- independent read-backs, one per runtime ---------------------------------------------------------


def onnx_convs(path: Path) -> dict[str, tuple[bool, bool, str]]:
    """Per Conv, keyed by its weight initializer's module: (weights dequantized from INT8, input
    dequantized, node name). A concat's or broadcast's input counts as dequantized when all its inputs are."""
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        if node is not None and node.op_type in ("Concat", "Expand"):
            return all(dequantized(i) for i in (node.input if node.op_type == "Concat" else node.input[:1]))
        return node is not None and node.op_type == "DequantizeLinear"

    out = {}
    for node in (n for n in graph.node if n.op_type == "Conv"):
        weight, chain = node.input[1], []
        while weight in producer:  # DequantizeLinear <- QuantizeLinear <- the weight initializer
            chain.append(producer[weight].op_type)
            weight = producer[weight].input[0]
        out[weight.removesuffix(".weight")] = (chain[:1] == ["DequantizeLinear"], dequantized(node.input[0]), node.name)
    return out


def openvino_convs(xml: Path) -> tuple[dict[str, tuple[bool, bool]], dict[str, str]]:
    """Per convolution of the IR (by name): (INT8 weights: an i8 constant dequantized, input behind a
    FakeQuantize); and per convolution of the compiled model (f32 hint): its runtime precision."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))

    def source(op: Any, i: int) -> Any:
        return op.input(i).get_source_output().get_node()

    def fq(node: Any) -> bool:
        kind = node.get_type_name()
        if kind == "Concat":
            return all(fq(source(node, i)) for i in range(node.get_input_size()))
        return fq(source(node, 0)) if kind == "Broadcast" else kind == "FakeQuantize"

    def int8_weights(node: Any) -> bool:
        while node.get_type_name() in ("Reshape", "Multiply", "Subtract", "Convert"):
            node = source(node, 0)
        return node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() == "i8"

    ir = {
        op.get_friendly_name(): (int8_weights(source(op, 1)), fq(source(op, 0)))
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution")
    }
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    runtime = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            runtime[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
    return ir, runtime


def coreml_convs(path: Path) -> list[tuple[bool, bool, tuple[int, ...]]]:
    """Core ML's convs in program order: (int8 weights: constexpr_affine_dequantize of INT8 data,
    input from a dequantize op (or a concat/tile of them), weight shape)."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    producer = {o.name: op for op in ops for o in op.outputs}

    def dequantized(name: str) -> bool:
        op = producer.get(name)
        if op is not None and op.type in ("concat", "tile"):
            return all(dequantized(a.name) for k in ("x", "values") if k in op.inputs for a in op.inputs[k].arguments)
        return op is not None and op.type == "dequantize"

    out = []
    for op in (o for o in ops if o.type == "conv"):
        w = producer[op.inputs["weight"].arguments[0].name]
        data = w.attributes.get("quantized_data")
        int8 = (
            w.type == "constexpr_affine_dequantize" and data is not None and MIL_pb2.DataType.Name(data.type.tensorType.dataType) == "INT8"
        )
        shape = tuple(int(d.constant.size) for d in w.outputs[0].type.tensorType.dimensions)
        out.append((int8, dequantized(op.inputs["x"].arguments[0].name), shape))
    return out


# --- --keep-float 2 on every target ------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_keep_float_lists_and_keeps_exactly_those_layers(target: str, world: dict[str, Any], artifacts: dict[str, Path]) -> None:
    folder = artifacts[target]
    meta = json.loads((folder / "meta.json").read_text())
    assert folder.name == f"{target}_int8_os16_float2"
    assert meta["float_layers"] == TOP2
    assert sorted(meta["float_convs"]) == sorted(FLOAT_CONVS)
    assert meta["float_source"]["keep_float"] == 2 and meta["float_source"]["sensitivity"] == str(world["sens"])
    assert meta["float_source"]["expected_miou"] == CURVE[1] and meta["float_source"]["sensitivity_sha256"] == file_hash(world["sens"])
    convs = [name for name, _ in world["order"]]
    if target in ("onnx", "jetson"):
        read = onnx_convs(folder / "model.onnx")
        assert sorted(read) == sorted(convs)
        for name, (w, x, node) in read.items():
            assert (w, x) == (name not in FLOAT_CONVS, name not in FLOAT_INPUTS), node
    elif target == "openvino":
        ir, runtime = openvino_convs(folder / "model.xml")
        onnx_names = {name: node for name, (_, _, node) in onnx_convs(artifacts["onnx"] / "model.onnx").items()}
        float_names = {onnx_names[c] + "/WithoutBiases" for c in FLOAT_CONVS}  # OpenVINO keeps the ONNX node names
        assert len(ir) == len(runtime) == len(convs)
        assert {n for n, (w, x) in ir.items() if not w} == float_names
        assert {n for n, (w, x) in ir.items() if not x} == float_names  # no FakeQuantize on their inputs
        assert {n for n, p in runtime.items() if p not in ("u8", "i8")} == float_names, runtime
    else:
        ops = coreml_convs(folder / "model.mlpackage")
        assert [s for _, _, s in ops] == [s for _, s in world["order"]]  # matched by order, confirmed by shape
        assert [(w, x) for w, x, _ in ops] == [(n not in FLOAT_CONVS, n not in FLOAT_INPUTS) for n in convs]
    assert verify_artifact(folder, model_from_checkpoint(load_checkpoint(world["ptq"]))).float_convs  # its own check passes


@pytest.mark.parametrize("extra", ["decoder.low_q", "encoder.features.5.out_q"])
@pytest.mark.parametrize("target", TARGETS)
def test_a_meta_listing_an_int8_layer_float_fails_verification(
    target: str, extra: str, world: dict[str, Any], artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """decoder.low_q is read by a conv (low_proj); encoder.features.5.out_q only by a residual add."""
    folder = tmp_path / artifacts[target].name
    shutil.copytree(artifacts[target], folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["float_layers"] = [*meta["float_layers"], extra]
    meta["float_convs"] = sorted({*meta["float_convs"], *(["decoder.low_proj.0"] if extra == "decoder.low_q" else [])})  # consistent
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TargetError) as exc:
        verify_artifact(folder, model_from_checkpoint(load_checkpoint(world["ptq"])))
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"'{folder}' does not keep exactly the float layers of meta.json")
    if extra == "decoder.low_q":
        assert "conv 'decoder.low_proj.0' has INT8 weights, INT8 input, expected float weights, float input" in message
    elif target == "coreml":  # its ops carry no names: the residual add it feeds has two INT8 inputs
        assert "the add encoder.features.5.in_q + encoder.features.5.out_q has 2 INT8 inputs, expected 1" in message
    else:
        assert re.search(
            r"'/encoder/features\.5/out_q/\w+' quantizes activation 'encoder\.features\.5\.out_q', which is kept float", message
        )


# --- --max-drop ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "k"),
    [(15.0, 0), (6.0, 2), (5.9, 3), (2.0, 3), (1.5, 3)],  # FP32 - INT8 = 15; the curve drops 10, 6, 1.5
)
def test_max_drop_keeps_the_fewest_layers_within_it(drop: float, k: int, world: dict[str, Any]) -> None:
    request = ExportRequest(checkpoint=world["ptq"], options={"max_drop": drop, "sensitivity": world["sens"]})
    resolve(request)
    assert request.options["float_layers"] == RANKED[:k]
    assert request.options["float_source"]["expected_miou"] == ([INT8_MIOU] + CURVE)[k]


def test_max_drop_beyond_the_curve_is_one_line(world: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(ExportRequest(checkpoint=world["ptq"], options={"max_drop": 1.0, "sensitivity": world["sens"]}))
    assert str(exc.value) == (
        "no layer set within the measured 3 reaches a drop of 1.0 mIoU (keeping 3 layers in float gives 1.50 mIoU); "
        "raise --max-drop/--max-class-drop, use QAT, or measure a longer curve"
    )


def test_max_class_drop_takes_the_curve_point_every_class_is_within(world: dict[str, Any], tmp_path: Path) -> None:
    """The hand file with classes: FP32 sky 50 / road 70; full INT8 loses 4 / 26 (mIoU 45). The
    curve (50, 54, 58.5 mIoU) brings sky to 47, 49.5, 48 and road to 53, 58.5, 69: road is within
    1.5 IoU only at k=3, sky within 1.5 only at k=2."""
    data = sensitivity_file(world["names"], sha=file_hash(world["ptq"]))
    data.update(float_per_class={"sky": 50.0, "road": 70.0}, int8_per_class={"sky": 46.0, "road": 44.0}, output_stride=16)
    for point, (sky, road) in zip(data["cumulative"], [(47.0, 53.0), (49.5, 58.5), (48.0, 69.0)]):
        point["per_class_iou"] = {"sky": sky, "road": road}
    file = tmp_path / "classes.json"
    file.write_text(json.dumps(data))
    expect = {(6.0, None): 2, (6.0, 12.0): 2, (6.0, 11.0): 3, (2.0, 2.0): 3}
    for (drop, per_class), k in expect.items():
        request = ExportRequest(checkpoint=world["ptq"], options={"max_drop": drop, "max_class_drop": per_class, "sensitivity": file})
        resolve(request)
        assert request.options["float_layers"] == RANKED[:k], (drop, per_class)
        assert request.options["float_source"]["max_class_drop"] == per_class and request.options["float_source"]["output_stride"] == 16
    with pytest.raises(ConfigError, match=r"reaches a drop of 2.0 mIoU with no class losing more than 1.5 IoU"):
        resolve(ExportRequest(checkpoint=world["ptq"], options={"max_drop": 2.0, "max_class_drop": 1.5, "sensitivity": file}))
    # Measured at OS8, the file serves an OS8 export and no other.
    data["output_stride"] = 8
    file.write_text(json.dumps(data))
    request = ExportRequest(checkpoint=world["ptq"], output_stride=8, options={"max_drop": 6.0, "sensitivity": file})
    resolve(request)
    assert request.options["float_layers"] == RANKED[:2]
    with pytest.raises(CheckpointError, match="measured at output stride 8, this export is at 16"):
        resolve(ExportRequest(checkpoint=world["ptq"], options={"max_drop": 6.0, "sensitivity": file}))


def test_sensitivity_at_another_output_stride_with_a_class_limit(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgeseg sensitivity --output-stride 8 --max-class-drop 0.5` measures the OS8 model and orders its curve for the limit."""
    from edgeseg.train.sensitivity import class_excess, read_sensitivity

    out = tmp_path / "os8.json"
    argv = ["sensitivity", str(world["ptq"]), "--output-stride", "8", "--max-class-drop", "0.5", "--cumulative", "3", "--json", str(out)]
    monkeypatch.setattr("sys.argv", ["edgeseg", *argv])
    cli.main()
    result = read_sensitivity(out)  # the schema accepts its own file
    assert result.output_stride == 8 and result.max_class_drop == 0.5
    excess = {s.name: class_excess(result.float_per_class, s.per_class_iou, 0.5) for s in result.layers}
    order = result.cumulative[-1]["layers"]
    assert [excess[n] for n in order] == sorted(excess.values())[:3]  # least over the limit first
    assert all(p["per_class_iou"] for p in result.cumulative)
    os16 = tmp_path / "os16.json"
    monkeypatch.setattr("sys.argv", ["edgeseg", "sensitivity", str(world["ptq"]), "--cumulative", "1", "--json", str(os16)])
    cli.main()
    assert read_sensitivity(os16).output_stride == 16  # (output_stride is read from the model measured, not the option)


def test_sensitivity_ranks_on_few_images_and_reuses_a_ranking(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--images 2 --curve-images 4`: layers ranked on 2 images, the curve on 4; `--ranking` reuses that
    ranking and measures the same curve again; a ranking of another stride or checkpoint is refused."""
    from edgeseg.train.sensitivity import read_sensitivity

    def run(*args: str) -> None:
        monkeypatch.setattr("sys.argv", ["edgeseg", "sensitivity", str(world["ptq"]), "--cumulative", "2", *args])
        cli.main()

    first, again = tmp_path / "first.json", tmp_path / "again.json"
    run("--images", "2", "--curve-images", "4", "--json", str(first))
    a = read_sensitivity(first)  # the schema accepts its own file
    assert a.images == 4 and a.ranking is not None and a.ranking["images"] == 2 and len(a.cumulative) == 2
    assert "layers ranked on 2 images" in capsys.readouterr().out
    run("--ranking", str(first), "--curve-images", "4", "--json", str(again))
    b = read_sensitivity(again)
    assert [s.name for s in b.layers] == [s.name for s in a.layers] and b.ranking["source"] == str(first)
    assert [(p["layers"], p["miou"]) for p in b.cumulative] == [(p["layers"], pytest.approx(p["miou"])) for p in a.cumulative]
    for args, expect in [
        (["--ranking", str(first), "--output-stride", "8"], f"--ranking '{first}' was measured at OS16, this curve at OS8"),
        (
            ["--ranking", str(first), "--curve-images", "1"],
            "--curve-images 1 is out of range; use 2..10000 (at least the ranking's images)",
        ),
        (["--ranking", str(world["sens"].with_name("other_sha.json"))], "was measured on another checkpoint (ptq.pt)"),
    ]:
        world["sens"].with_name("other_sha.json").write_text(json.dumps(sensitivity_file(world["names"], sha="0" * 64)))
        with pytest.raises(SystemExit) as exc:
            run(*args)
        assert exc.value.code == 2 and expect in capsys.readouterr().err


def test_cli_max_drop_exports_and_verifies(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI, with a residual's quantizer (encoder.features.3.out_q) among the three layers."""
    argv = ["export", str(world["ptq"]), "--target", "onnx", "--max-drop", "2", "--sensitivity", str(world["sens"]), "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["edgeseg", *argv])
    cli.main()
    folder = tmp_path / "onnx_int8_os16_drop2"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["float_layers"] == RANKED and meta["float_source"]["max_drop"] == 2.0
    assert "kept float (read back from the graph): 3 layers, 5 convs" in capsys.readouterr().out
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert not [n.name for n in graph.node if n.op_type == "QuantizeLinear" and "/features.3/out_q/" in n.name]
    assert [n.name for n in graph.node if n.op_type == "QuantizeLinear" and "/features.5/out_q/" in n.name]  # its twin stays INT8
    verify_artifact(folder, model_from_checkpoint(load_checkpoint(world["ptq"])))


# --- bad inputs: one line each ---------------------------------------------------------------------


def _bad_files(world: dict[str, Any], folder: Path) -> dict[str, Path]:
    names = world["names"]
    files = {
        "other_sha": sensitivity_file(names, sha="0" * 64),
        "other_model": sensitivity_file([*names[:-1], "decoder.elsewhere"], sha=None),
        "images_0": {**sensitivity_file(names, sha=None), "images": 0},
        "unranked": {**sensitivity_file(names, sha=None), "layers": sensitivity_file(names, sha=None)["layers"][::-1]},
    }
    out = {}
    for key, data in files.items():
        out[key] = folder / f"{key}.json"
        out[key].write_text(json.dumps(data))
    out["not_json"] = folder / "not.json"
    out["not_json"].write_text("{")
    return out


BAD = [
    (["--keep-float", "2", "--max-drop", "1"], "--keep-float and --max-drop are exclusive; pass one (K layers float, or the fewest within D mIoU points)"),
    (["--keep-float", "2", "--precision", "fp32"], "--keep-float/--max-drop keep layers of an INT8 export in float; use --precision int8, not fp32"),
    (["--keep-float", "-1"], "--keep-float -1 is out of range; use 0..the number of layers"),
    (["--keep-float", "1000"], "--keep-float 1000 is out of range; '{ptq}' has {n} layers: use 0..{n}"),
    (["--max-drop", "nan"], "--max-drop nan is out of range; use mIoU points in 0..100"),
    (["--max-drop", "-0.5"], "--max-drop -0.5 is out of range; use mIoU points in 0..100"),
    (["--sensitivity", "{sens}"], "--sensitivity FILE needs --keep-float K or --max-drop D to choose layers from it"),
    (["--keep-float", "2", "--target", "openvino", "--ptq", "nncf"], "--keep-float/--max-drop apply to the checkpoint's own INT8 ranges, not to --ptq; leave one of them out"),
    (["--keep-float", "2", "@fp32"], "'{fp32}' is an FP32 checkpoint; --keep-float/--max-drop need an INT8 one: run 'edgeseg calibrate {fp32} ...' (PTQ) or use qat.pt"),
    (["--keep-float", "2", "--sensitivity", "{other_sha}"], "'{other_sha}' ranks the layers of another checkpoint (ptq.pt), not '{ptq}'; measure this one with 'edgeseg sensitivity {ptq} --json FILE' and pass that"),
    (["--keep-float", "2", "--sensitivity", "{other_model}"], "'{other_model}' was measured on another model: layer 'decoder.elsewhere' is in one of the two only; measure this one with 'edgeseg sensitivity {ptq} --json FILE' and pass that"),
    (["--keep-float", "2", "--sensitivity", "{images_0}"], "'{images_0}': 'images' = 0 is invalid (Input should be greater than or equal to 1); write it again with 'edgeseg sensitivity CKPT --json images_0.json'"),
    (["--keep-float", "2", "--sensitivity", "{unranked}"], "'{unranked}': layers must be ranked by gain, highest first, as 'edgeseg sensitivity' writes them; write it again with 'edgeseg sensitivity CKPT --json unranked.json'"),
    (["--keep-float", "2", "--sensitivity", "{not_json}"], "'{not_json}' is not readable JSON (JSONDecodeError); write it again with 'edgeseg sensitivity CKPT --json not.json'"),
    (["--keep-float", "2", "--sensitivity", "{missing}"], "sensitivity file '{missing}' does not exist; write it again with 'edgeseg sensitivity CKPT --json missing.json'"),
    (["--max-drop", "1", "--sensitivity", "{sens}"], "no layer set within the measured 3 reaches a drop of 1.0 mIoU (keeping 3 layers in float gives 1.50 mIoU); raise --max-drop/--max-class-drop, use QAT, or measure a longer curve"),
    (["--max-class-drop", "1"], "--max-class-drop limits the per-class loss of --max-drop's choice; pass --max-drop D with it"),
    (["--max-drop", "1", "--max-class-drop", "-1"], "--max-class-drop -1.0 is out of range; use IoU points in 0..100"),
    (["--max-drop", "6", "--sensitivity", "{sens}", "--output-stride", "8"], "'{sens}' was measured at output stride 16, this export is at 8; measure it there with 'edgeseg sensitivity {ptq} --output-stride 8 --json FILE'"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expect"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_one_line(
    args: list[str], expect: str, world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {
        "ptq": world["ptq"],
        "fp32": world["fp32"],
        "sens": world["sens"],
        "missing": tmp_path / "missing.json",
        **_bad_files(world, tmp_path),
    }
    fill = {k: str(v) for k, v in paths.items()} | {"n": str(len(world["names"]))}
    ckpt = world["fp32"] if "@fp32" in args else world["ptq"]
    argv = ["export", str(ckpt), "--out", str(tmp_path / "out"), *(a.format(**fill) for a in args if a != "@fp32")]
    monkeypatch.setattr("sys.argv", ["edgeseg", *argv])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and "Traceback" not in err
    assert errors == [f"error: {expect.format(**fill)}"], err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_meta_schema_range_checks_float_layers(world: dict[str, Any], artifacts: dict[str, Path]) -> None:
    from edgeseg.export.meta import validate_meta

    meta = json.loads((artifacts["onnx"] / "meta.json").read_text())
    changes: list[tuple[dict[str, Any], str]] = [
        ({"float_layers": ["decoder.cat_q", "decoder.cat_q"]}, "lists 'decoder.cat_q' twice"),
        ({"float_layers": ["bad name!"]}, "must be a module name"),
        ({"precision": "fp32"}, "float_layers/float_convs belong to INT8 artifacts, this one is fp32"),
        ({"float_layers": []}, "float_convs lists convolutions but float_layers is empty"),
    ]
    for change, expect in changes:
        with pytest.raises(CheckpointError, match=re.escape(expect)):
            validate_meta({**meta, **change}, "meta.json")


def test_measured_when_no_file_is_given(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --sensitivity the CLI measures the ranking on the recipe's val split (default images,
    a progress bar) and keeps its first layer; the file `edgeseg sensitivity` writes gives the same."""
    monkeypatch.setattr("sys.argv", ["edgeseg", "sensitivity", str(world["ptq"]), "--cumulative", "1", "--json", str(tmp_path / "s.json")])
    cli.main()
    ranked = json.loads((tmp_path / "s.json").read_text())
    assert ranked["checkpoint_sha256"] == file_hash(world["ptq"])
    monkeypatch.setattr(
        "sys.argv", ["edgeseg", "export", str(world["ptq"]), "--target", "onnx", "--keep-float", "1", "--out", str(tmp_path)]
    )
    cli.main()
    meta = json.loads((tmp_path / "onnx_int8_os16_float1" / "meta.json").read_text())
    assert meta["float_layers"] == [ranked["layers"][0]["name"]]
    source = meta["float_source"]
    assert source["sensitivity"] == "measured on the recipe's val split" and source["images"] == ranked["images"] == 4
    assert math.isclose(source["int8_miou"], ranked["int8_miou"]) and math.isclose(source["expected_miou"], ranked["cumulative"][0]["miou"])
    steps = len(world["names"]) + 3  # each layer alone, FP32, INT8, and one curve point
    assert re.search(rf"sensitivity .* {steps}/{steps}", capsys.readouterr().err)
