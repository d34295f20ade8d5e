"""CLI flags that no other test used, each checked by its effect against an independent reference:

- export --output-stride (not the checkpoint's), --input-size: meta.json and the runtime's logits
  against the torch model built at that stride / size;
- export --exact-grid, --allow-fallback: the shipped IR's quantizers, and a fallback that stops
  the export unless allowed;
- export --dla, --trt-version 11: build.json and the trtexec lines, written out by hand; a
  preflight error (TensorRT rule broken) exits 2 with one line and leaves no artifact;
- export --target coreml (int8): the W8A8 package's weight scales are edgeseg's int8 scale rule;
- calibrate --num-images, --percentile: the input range by hand (max / percentile of |x|);
- eval --split, bench --split: pixels, image counts and mIoU by hand on that split;
- bench --precision-hint: the execution precision OpenVINO compiled with, in the result row.

A tiny model (width 0.35, 5 classes, 64x64, synthetic scenes) with random weights and real BN
statistics, at OS16, plus its PTQ checkpoint; artifacts are made once and shared.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from edgeseg.cli import app, main
from edgeseg.config import recipe_from_dict
from edgeseg.data import open_source
from edgeseg.data.classes import SYNTHETIC
from edgeseg.data.preprocess import preprocess
from edgeseg.data.synthetic import make_scene
from edgeseg.export.common import argmax_agreement, float_model_of
from edgeseg.models import build_model
from edgeseg.quant import QuantConv2d, int8_scale, quant_state, quantize
from edgeseg.quant.data import array_loop
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

pytestmark = pytest.mark.integration
SIZE = (64, 64)
NUM_TRAIN, NUM_VAL = 8, 4
SYNTH = {"num_train": NUM_TRAIN, "num_val": NUM_VAL, "size": list(SIZE), "seed": 0}
runner = CliRunner()


# --- shared checkpoints and artifacts --------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32.pt (random weights, BN statistics of the train scenes) and ptq.pt (percentile PTQ), OS16."""
    folder = tmp_path_factory.mktemp("flags")
    recipe = recipe_from_dict(
        {
            "name": "flags",
            "model": {"width_mult": 0.35, "output_stride": 16},
            "data": {
                "format": "synthetic",
                "synthetic_num_train": NUM_TRAIN,
                "synthetic_num_val": NUM_VAL,
                "synthetic_size": list(SIZE),
                "crop_size": list(SIZE),
            },
            "quant": {"calib_num_images": 8},
            "export": {"input_size": list(SIZE)},
        }
    )
    torch.manual_seed(0)
    model = build_model(num_classes=5, output_stride=16, width_mult=0.35)
    source = open_source("synthetic", None, "train", SYNTH)
    batch = torch.from_numpy(np.concatenate([preprocess(source.load(i)[0]) for i in range(NUM_TRAIN)]))
    # BN statistics of the train scenes themselves (one pass, cumulative average), then every BN
    # scale times 0.8: activations shrink gently with depth. The logits still vary over the image
    # and with the output stride, but INT8 rounding no longer flips their argmax: a random network
    # whose every layer has unit variance is so sensitive that INT8 flips half of its pixels.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()
        model(batch)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.mul_(0.8)
    model.eval()
    save_checkpoint(folder / "fp32.pt", model=model, recipe=recipe, classes=SYNTHETIC)
    q = quantize(model, {"method": "percentile", "percentile": 99.99}, array_loop(lambda i: source.load(i)[0], len(source), SIZE))
    meta = {"method": "percentile", "calib_list": "synthetic:train", "num_images": len(source), "qat": False}
    save_checkpoint(folder / "ptq.pt", model=q, recipe=recipe, classes=SYNTHETIC, quant=quant_state(q), quant_meta=meta)
    return folder


@pytest.fixture(scope="module")
def exported(work: Path) -> Callable[..., Path]:
    """export(ckpt name, *flags) -> the artifact folder, exported once per set of flags."""
    cache: dict[tuple[str, ...], Path] = {}

    def export(ckpt: str, *flags: str) -> Path:
        key = (ckpt, *flags)
        if key not in cache:
            out = work / f"export{len(cache)}"
            result = runner.invoke(app, ["export", str(work / ckpt), *flags, "--out", str(out)])
            assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
            (cache[key],) = list(out.iterdir())
        return cache[key]

    return export


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The console entry point in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["edgeseg", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip()


def _images(split: str, n: int, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    offset = 0 if split == "train" else 1_000_000
    return [make_scene(0, offset + i, size)[0] for i in range(n)]


def _torch_logits(ckpt: Path, images: list[np.ndarray], *, stride: int = 16, size: tuple[int, int] = SIZE, int8: bool) -> np.ndarray:
    """The reference: the checkpoint's torch model built at `stride` for `size` (fake-quant for INT8)."""
    model = model_from_checkpoint(load_checkpoint(ckpt), stride).eval()
    model.set_input_size(size)
    model = model if int8 else float_model_of(model)
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(preprocess(im, size))).numpy() for im in images])


def _runtime_logits(folder: Path, images: list[np.ndarray]) -> np.ndarray:
    from edgeseg.export.base import get_target

    meta = json.loads((folder / "meta.json").read_text())
    run = get_target(meta["target"]).load(folder, meta).runner.run
    size = tuple(meta["input_size"])
    return np.concatenate([np.array(run(preprocess(im, size)), copy=True) for im in images])  # runners may return a view


# --- export --output-stride / --input-size ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ckpt", "target", "precision", "stride"),
    [("fp32.pt", "onnx", "fp32", 8), ("fp32.pt", "openvino", "fp32", 32), ("ptq.pt", "openvino", "int8", 8)],
)
def test_export_at_another_output_stride_than_the_checkpoint(
    work: Path, exported: Callable[..., Path], ckpt: str, target: str, precision: str, stride: int
) -> None:
    assert load_checkpoint(work / ckpt)["arch"]["output_stride"] == 16
    logits = ("--input", "tensor", "--output", "logits") if target == "openvino" else ()  # logits, to compare with torch's
    folder = exported(ckpt, "--target", target, "--precision", precision, "--output-stride", str(stride), *logits)
    meta = json.loads((folder / "meta.json").read_text())
    assert folder.name == f"{target}_{precision}_os{stride}" + ("_tensor-logits" if logits else "") and meta["output_stride"] == stride
    images = _images("val", 2)
    got = _runtime_logits(folder, images)
    ref = _torch_logits(work / ckpt, images, stride=stride, int8=precision == "int8")
    at16 = _torch_logits(work / ckpt, images, stride=16, int8=precision == "int8")
    if precision == "fp32":
        tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
        assert np.abs(got - ref).max() <= tol
        assert np.abs(got - at16).max() > 100 * tol  # the stride changes the function: the check can tell
    else:
        # Two INT8 engines round near-tied logits differently (and the IR runs ReLU outputs in u8).
        assert argmax_agreement(got, ref) >= 0.97
    # The graph has the dilations of the torch model built at that stride (a trous encoder, ASPP rates).
    want = Counter(m.dilation for m in model_from_checkpoint(load_checkpoint(work / ckpt), stride).modules() if isinstance(m, nn.Conv2d))
    at16_dilations = Counter(m.dilation for m in model_from_checkpoint(load_checkpoint(work / ckpt)).modules() if isinstance(m, nn.Conv2d))
    assert _dilations(folder) == want != at16_dilations


def _dilations(folder: Path) -> Counter[tuple[int, ...]]:
    """Dilations of every convolution of an artifact's graph: the ONNX file, or the OpenVINO IR."""
    if (folder / "model.onnx").is_file():
        nodes = [n for n in onnx.load(str(folder / "model.onnx")).graph.node if n.op_type == "Conv"]
        return Counter(tuple(next((list(a.ints) for a in n.attribute if a.name == "dilations"), [1, 1])) for n in nodes)
    import openvino as ov

    ops = ov.Core().read_model(str(folder / "model.xml")).get_ordered_ops()
    convs = [op for op in ops if op.get_type_name() in ("Convolution", "GroupConvolution")]
    return Counter(tuple(int(d) for d in op.get_attributes()["dilations"]) for op in convs)


@pytest.mark.parametrize("size", [(96, 128), (48, 80)])
def test_export_input_size_sets_meta_and_model_shape(work: Path, exported: Callable[..., Path], size: tuple[int, int]) -> None:
    folder = exported("fp32.pt", "--target", "onnx", "--precision", "fp32", "--input-size", f"{size[0]}x{size[1]}")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["input_size"] == list(size)
    graph = onnx.load(str(folder / "model.onnx")).graph
    dims = [[d.dim_value for d in t.type.tensor_type.shape.dim] for t in (graph.input[0], graph.output[0])]
    assert dims == [[1, 3, *size], [1, 5, *size]]
    images = _images("val", 1, size)
    ref = _torch_logits(work / "fp32.pt", images, size=size, int8=False)
    assert np.abs(_runtime_logits(folder, images) - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))
    # `edgeseg check` takes the ONNX artifact's folder as its model file, TensorRT 10 by default.
    by_folder, by_file = (runner.invoke(app, ["check", str(p)]) for p in (folder, folder / "model.onnx"))
    assert (
        (by_folder.exit_code, by_folder.output)
        == (by_file.exit_code, by_file.output)
        == (0, f"{folder / 'model.onnx'}: 0 errors, 0 warnings (TensorRT 10.x)\n")
    )


# --- export --exact-grid / --allow-fallback (OpenVINO INT8) ----------------------------------------


def _lowered_fake_quantizes(xml: Path) -> tuple[int, int]:
    """(activation FakeQuantize nodes, those on a u8 range [0, top]) read from the IR itself."""
    import openvino as ov

    fqs = [op for op in ov.Core().read_model(str(xml)).get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    acts = [fq for fq in fqs if fq.input(0).get_source_output().get_node().get_type_name() != "Constant"]
    low = [float(fq.input(1).get_source_output().get_node().get_data().ravel()[0]) for fq in acts]
    return len(acts), sum(v == 0.0 for v in low)


@pytest.mark.parametrize(("flags", "exact"), [(("--output-stride", "8"), False), (("--exact-grid",), True)])
def test_export_exact_grid_keeps_the_signed_grid(exported: Callable[..., Path], flags: tuple[str, ...], exact: bool) -> None:
    folder = exported("ptq.pt", "--target", "openvino", "--precision", "int8", *flags)
    meta = json.loads((folder / "meta.json").read_text())
    total, unsigned = _lowered_fake_quantizes(folder / "model.xml")
    assert total > 60
    assert meta["openvino_lowering"] == {"exact_grid": exact, "unsigned_activations": unsigned}
    # MobileNetV2 + DeepLabV3+: 34 ReLU6 outputs, 13 ReLU outputs and the upsampled ASPP output.
    assert unsigned == (0 if exact else 48)
    assert (meta["verification"]["exact_grid_agreement"] is None) == exact


@pytest.mark.parametrize("allow", [False, True])
def test_export_allow_fallback(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], allow: bool
) -> None:
    """An OpenVINO whose CPU plugin runs one convolution in f32 (the runtime report is edited):
    the export stops with one line unless --allow-fallback, which records the layer instead."""
    from edgeseg.export import openvino_ir

    real = openvino_ir.runtime_layers

    def one_conv_in_f32(compiled: Any) -> list[dict[str, str]]:
        rows = real(compiled)
        conv = next(r for r in rows if r["type"] == "Convolution" and r["runtime_precision"] in ("u8", "i8"))
        conv["runtime_precision"] = "f32"
        return rows

    monkeypatch.setattr(openvino_ir, "runtime_layers", one_conv_in_f32)
    out = tmp_path / "e"
    args = ["export", str(work / "ptq.pt"), "--target", "openvino", "--precision", "int8", "--out", str(out)]
    code, err = _main(monkeypatch, capsys, *args, *(["--allow-fallback"] if allow else []))
    if not allow:
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("error: 1 weighted layers do not run in INT8 on OpenVINO: ") and err.endswith("pass --allow-fallback"), err
        assert not out.exists() or not list(out.iterdir())  # no artifact, no half folder
        return
    assert code == 0, err
    folder = out / "openvino_int8_os16"
    v = json.loads((folder / "meta.json").read_text())["verification"]
    assert v["fallbacks"] == 1 and v["weighted_layers_int8"] == v["weighted_layers"] - 1
    report = json.loads((folder / "precision_report.json").read_text())
    assert [f["runtime_precision"] for f in report["fallbacks"]] == ["f32"] and report["fallbacks"][0]["type"] == "Convolution"


# --- export --target jetson: --trt-version 11, --dla, preflight errors -----------------------------

ENGINE_TAIL = "--memPoolSize=workspace:2048M --timingCacheFile=timing.cache"


@pytest.mark.parametrize(
    ("ckpt", "precision", "dla", "trtexec10", "trtexec11"),
    [
        (
            "ptq.pt", "int8", None,
            f"trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped {ENGINE_TAIL}",
            f"trtexec --onnx=model.onnx --saveEngine=model.engine {ENGINE_TAIL}",
        ),
        (
            "ptq.pt", "int8", 1,
            f"trtexec --onnx=model.onnx --saveEngine=model.engine --int8 --fp16 --useDLACore=1 --allowGPUFallback {ENGINE_TAIL}",
            f"trtexec --onnx=model.onnx --saveEngine=model.engine --useDLACore=1 --allowGPUFallback {ENGINE_TAIL}",
        ),
        (
            "fp32.pt", "fp16", None,
            f"trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 {ENGINE_TAIL}",
            f"trtexec --onnx=model_fp16.onnx --saveEngine=model.engine {ENGINE_TAIL}",
        ),
    ],
)  # fmt: skip
def test_jetson_bundle_for_trt_11_and_dla(
    exported: Callable[..., Path], ckpt: str, precision: str, dla: int | None, trtexec10: str, trtexec11: str
) -> None:
    flags = ["--target", "jetson", "--precision", precision, "--trt-version", "11"] + (["--dla", str(dla)] if dla is not None else [])
    folder = exported(ckpt, *flags)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tensorrt"]["trt_version"] == 11 and meta["tensorrt"]["dla_core"] == dla
    build = json.loads((folder / "build.json").read_text())
    assert build["trtexec"] == {"10": trtexec10, "11": trtexec11}
    assert build["dla_core"] == dla and build["gpu_fallback"] == (dla is not None)
    # TensorRT 11 is always strongly typed; 10 only for INT8 on the GPU (DLA INT8 uses --int8 --fp16).
    assert build["strongly_typed"] == {"10": precision == "int8" and dla is None, "11": True}
    assert (folder / build["onnx"]["11"]).is_file()
    report = (folder / "preflight.txt").read_text().splitlines()
    head11 = next(ln for ln in report if ln.startswith("# TensorRT 11.x"))
    assert head11.startswith(f"# TensorRT 11.x ({build['onnx']['11']}): 0 errors")
    dla11 = [ln for ln in report if ln.startswith("warning: [dla] config: TensorRT 11 has DLA only from 11.4.1")]
    assert len(dla11) == (1 if dla is not None else 0)
    # `edgeseg check FOLDER` checks the bundle as its engine will be built: the ONNX file of the
    # bundle's TensorRT major (or --trt-version's), build.json's DLA core and shapes; the same
    # findings as the preflight.txt the export wrote for that major.
    for args, major in (([], 11), (["--trt-version", "10"], 10)):
        result = runner.invoke(app, ["check", str(folder), *args])
        head = next(i for i, ln in enumerate(report) if ln.startswith(f"# TensorRT {major}.x"))
        lines = list(itertools.takewhile(lambda ln: not ln.startswith("#"), report[head + 1 :]))
        errors = sum(ln.startswith("error:") for ln in lines)
        on = f", DLA {dla}" if dla is not None else ""
        count = f"{folder / build['onnx'][str(major)]}: {errors} errors, {len(lines) - errors} warnings (TensorRT {major}.x{on})"
        assert (result.exit_code, result.output.splitlines()) == (1 if errors else 0, [*lines, count]), result.output


@pytest.mark.parametrize("major", [10, 11])
def test_preflight_error_stops_the_jetson_export(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], major: int
) -> None:
    """A TensorRT `major` without Resize in its ONNX operator list: exporting for it exits 2 with one
    line and leaves nothing; exporting for the other major succeeds and records the errors."""
    from edgeseg.export.preflight_graph import SUPPORTED_OPS

    monkeypatch.setitem(SUPPORTED_OPS, major, SUPPORTED_OPS[major] - {"Resize"})
    out = tmp_path / "e"
    args = ["export", str(work / "ptq.pt"), "--target", "jetson", "--out", str(out)]
    code, err = _main(monkeypatch, capsys, *args, "--trt-version", str(major))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: TensorRT {major} preflight found ") and "[op-support] Resize '" in err, err
    assert f"Resize is not in TensorRT {major}.x's ONNX operator list" in err and err.endswith("'edgeseg check' lists them all")
    assert not out.exists() or not list(out.iterdir())  # no artifact, no temporary folder

    other = 21 - major
    code, err = _main(monkeypatch, capsys, *args, "--trt-version", str(other))
    assert code == 0, err
    folder = out / "jetson_int8_os16"
    resizes = sum(n.op_type == "Resize" for n in onnx.load(str(folder / "model.onnx")).graph.node)
    assert resizes >= 2 and json.loads((folder / "meta.json").read_text())["tensorrt"]["trt_version"] == other
    heads = [ln for ln in (folder / "preflight.txt").read_text().splitlines() if ln.startswith("# TensorRT")]
    assert f"# TensorRT {major}.x (model.onnx): {resizes} errors, 0 warnings" in heads
    assert f"# TensorRT {other}.x (model.onnx): 0 errors, 0 warnings" in heads


# --- export --target coreml: INT8 weight scales --------------------------------------------------


def test_coreml_int8_weight_scales_are_the_torch_scales(work: Path, exported: Callable[..., Path]) -> None:
    pytest.importorskip("coremltools")
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    folder = exported("ptq.pt", "--target", "coreml", "--precision", "int8")
    package = folder / "model.mlpackage"
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    program = load_milproto(spec, spec.specificationVersion, str(package / "Data/com.apple.CoreML/weights"))
    ops = list(program.functions["main"].operations)
    convs = [op for op in ops if op.op_type == "conv"]

    # The torch convs in the order the traced forward runs them (the order of the Core ML program).
    model = model_from_checkpoint(load_checkpoint(work / "ptq.pt")).eval()
    order: list[QuantConv2d] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in model.modules() if isinstance(m, QuantConv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, *SIZE))
    for h in hooks:
        h.remove()
    assert len(convs) == len(order) == 66

    for op, conv in zip(convs, order):
        dq = op.weight.op
        assert dq.op_type == "constexpr_affine_dequantize" and int(dq.axis.val) == 0 and not np.any(dq.zero_point.val)
        w = conv.weight.detach().double()
        scale = (w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-6) / 127).float()  # the rule, by hand
        torch.testing.assert_close(int8_scale(conv.weight_amax()), scale, rtol=0, atol=0)
        # The package stores scales in float16 (compute precision FLOAT16): the torch scale, rounded.
        np.testing.assert_array_equal(dq.scale.val, scale.numpy().astype(np.float16))
        q = torch.clamp(torch.round(w / scale.double().reshape(-1, 1, 1, 1)), -128, 127).to(torch.int8).numpy()
        assert dq.quantized_data.val.shape == q.shape and np.mean(dq.quantized_data.val != q) < 1e-3
        assert np.abs(dq.quantized_data.val.astype(int) - q).max() <= 1  # only round-half ties may differ

    # The first activation quantizer (the model input) has the scale of the input's amax / 127.
    quantize_ops = [op for op in ops if op.op_type == "quantize"]
    first_scale = float(quantize_ops[0].scale.val)
    input_amax = float(load_checkpoint(work / "ptq.pt")["model"]["encoder.input_q.amax"])
    assert first_scale == pytest.approx(float(np.float16(input_amax / 127)), rel=1e-3)


# --- calibrate --num-images / --percentile ---------------------------------------------------------


def _calib_list(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i}.png")
    (folder / "list.txt").write_text("".join(f"img{i}.png\n" for i in range(len(images))))
    return folder / "list.txt"


def _calibrate(work: Path, tmp_path: Path, images: list[np.ndarray], *flags: str) -> dict[str, Any]:
    listed = _calib_list(tmp_path / "calib", images)
    out = tmp_path / "ptq.pt"
    args = ["calibrate", str(work / "fp32.pt"), "--calib", str(listed), "--data-root", str(listed.parent), "--out", str(out), *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    ranges = json.loads((tmp_path / "ptq.ranges.json").read_text())
    assert load_checkpoint(out)["quant_meta"]["num_images"] == ranges["num_images"]
    return ranges


# Three images whose pixel ranges widen: each one more raises max |x| of the normalised input.
RANGES = [(110, 140), (90, 200), (20, 255)]


@pytest.mark.parametrize("num_images", [1, 2, 3])
def test_calibrate_num_images_reads_the_first_n_images(work: Path, tmp_path: Path, num_images: int) -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(lo, hi + 1, (*SIZE, 3), dtype=np.uint8) for lo, hi in RANGES]
    ranges = _calibrate(work, tmp_path, images, "--method", "max", "--num-images", str(num_images))
    assert ranges["num_images"] == num_images and ranges["method"] == "max"
    by_hand = [float(np.abs(preprocess(im)).max()) for im in images]
    assert by_hand[0] < by_hand[1] < by_hand[2]
    assert ranges["activations"]["encoder.input_q"] == pytest.approx(max(by_hand[:num_images]), rel=1e-5)


@pytest.mark.parametrize("percentile", [90.0, 99.0])
def test_calibrate_percentile_sets_the_range(work: Path, tmp_path: Path, percentile: float) -> None:
    image = np.random.default_rng(9).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    args = ["--method", "percentile", "--percentile", str(percentile), "--num-images", "1"]
    ranges = _calibrate(work, tmp_path, [image, image[::-1]], *args)
    assert ranges["num_images"] == 1 and ranges["percentile"] == percentile
    a = np.abs(preprocess(image)).ravel()
    width = float(a.max()) / 2048  # the calibrator's histogram: 2048 bins up to the image's max
    amax = ranges["activations"]["encoder.input_q"]
    assert abs(amax - float(np.percentile(a, percentile))) <= 2 * width
    assert amax < float(a.max()) - 10 * width  # clipped below max |x|


# --- eval --split, bench --split -------------------------------------------------------------------


def _miou_by_hand(logits: np.ndarray, split: str, n: int) -> float:
    truth = np.stack([make_scene(0, (0 if split == "train" else 1_000_000) + i, SIZE)[1] for i in range(n)])
    pred = logits.argmax(1)
    ious = [((pred == c) & (truth == c)).sum() / ((pred == c) | (truth == c)).sum() for c in range(5) if ((pred == c) | (truth == c)).any()]
    return float(np.mean(ious) * 100)


@pytest.mark.parametrize(("split", "count"), [("train", NUM_TRAIN), ("val", NUM_VAL)])
def test_eval_split(work: Path, tmp_path: Path, split: str, count: int) -> None:
    result = runner.invoke(app, ["eval", str(work / "fp32.pt"), "--split", split, "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["pixels"] == count * SIZE[0] * SIZE[1]
    logits = _torch_logits(work / "fp32.pt", _images(split, count), int8=False)
    assert summary["miou"] == pytest.approx(_miou_by_hand(logits, split, count), abs=1e-6)


def test_eval_title_says_how_far_the_checkpoint_trained(work: Path, tmp_path: Path) -> None:
    from edgeseg.train.checkpoint import checkpoint_recipe

    c = load_checkpoint(work / "fp32.pt")
    mid = tmp_path / "mid.pt"
    save_checkpoint(mid, model=model_from_checkpoint(c), recipe=checkpoint_recipe(c), classes=SYNTHETIC, stage="fp32", iteration=225)
    shown = runner.invoke(app, ["eval", str(mid)])
    assert shown.exit_code == 0, shown.output
    assert "fp32 step 225" in " ".join(shown.output.split())
    # A checkpoint that does not say (here: written outside training) gets no claim.
    plain = runner.invoke(app, ["eval", str(work / "fp32.pt")])
    assert plain.exit_code == 0 and " step " not in " ".join(plain.output.split())


@pytest.mark.parametrize(("split", "count"), [("train", NUM_TRAIN), ("val", NUM_VAL)])
def test_bench_split(work: Path, exported: Callable[..., Path], tmp_path: Path, split: str, count: int) -> None:
    folder = exported("fp32.pt", "--target", "onnx", "--precision", "fp32", "--output-stride", "8")
    args = ["bench", str(folder), "--split", split, "--runs", "2", "--warmup", "0", "--json", str(tmp_path / "r.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["data"]["split"] == split and row["num_images"] == count
    logits = _torch_logits(work / "fp32.pt", _images(split, count), stride=8, int8=False)
    assert row["miou"] == pytest.approx(_miou_by_hand(logits, split, count), abs=0.05)


# --- bench --precision-hint ------------------------------------------------------------------------


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.parametrize(
    ("artifact", "hint", "recorded"),
    [
        (("fp32.pt", "--target", "openvino", "--precision", "fp32", "--output-stride", "32"), None, "f32"),  # meta.json's
        (("fp32.pt", "--target", "openvino", "--precision", "fp32", "--output-stride", "32"), "bf16", "bf16"),
        (("ptq.pt", "--target", "openvino", "--precision", "int8", "--output-stride", "8"), "bf16", "bf16"),
        (None, "bf16", None),  # a torch checkpoint: OpenVINO's hint does not apply (warned, not recorded)
    ],
)
def test_bench_precision_hint_is_what_openvino_compiled_with(
    work: Path, exported: Callable[..., Path], tmp_path: Path, artifact: tuple[str, ...] | None, hint: str | None, recorded: str | None
) -> None:
    if recorded == "bf16" and not _cpu_has_bf16():
        pytest.skip("this CPU has no bf16: OpenVINO runs f32 whatever the hint")
    path = exported(*artifact) if artifact else work / "fp32.pt"
    args = ["bench", str(path), "--no-accuracy", "--runs", "2", "--warmup", "0", "--json", str(tmp_path / "r.json")]
    result = runner.invoke(app, args + (["--precision-hint", hint] if hint else []))
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["precision_hint"] == recorded and row["runtime"] == ("torch" if artifact is None else "openvino")
