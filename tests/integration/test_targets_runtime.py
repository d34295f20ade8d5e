"""Targets with their real runtimes: OpenVINO (compiled and compared here), the Jetson bundle
(checked statically; TensorRT itself where a GPU exists), Core ML (converted and inspected here;
prediction on macOS). A tiny model (width 0.35, 5 classes, 64x64) calibrated on synthetic scenes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeseg.config import recipe_from_dict
from edgeseg.data import open_source
from edgeseg.data.classes import SYNTHETIC
from edgeseg.data.preprocess import preprocess
from edgeseg.errors import TargetError
from edgeseg.export.artifacts import export_artifact
from edgeseg.export.base import ExportRequest
from edgeseg.export.common import argmax_agreement
from edgeseg.export.meta import ArtifactMeta, read_meta
from edgeseg.models import build_model
from edgeseg.quant import quant_state, quantize
from edgeseg.quant.data import array_loop
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SIZE = (64, 64)
SYNTH = {"num_train": 8, "num_val": 4, "size": list(SIZE), "seed": 0}


def _recipe(output_stride: int, head: str = "deeplabv3plus") -> object:
    return recipe_from_dict(
        {
            "name": "tiny",
            "model": {"width_mult": 0.35, "output_stride": output_stride, "head": head},
            "data": {
                "format": "synthetic",
                "synthetic_num_train": 8,
                "synthetic_num_val": 4,
                "synthetic_size": list(SIZE),
                "crop_size": list(SIZE),
            },
            "quant": {"calib_num_images": 8},
            "export": {"input_size": list(SIZE)},
        }
    )


def _checkpoints(folder: Path, output_stride: int, head: str = "deeplabv3plus") -> tuple[Path, Path]:
    """An FP32 checkpoint (random weights, BN statistics made non-trivial) and its PTQ checkpoint."""
    torch.manual_seed(output_stride)
    model = build_model(num_classes=5, output_stride=output_stride, width_mult=0.35, head=head)
    source = open_source("synthetic", None, "train", SYNTH)
    batch = torch.from_numpy(np.concatenate([preprocess(source.load(i)[0]) for i in range(4)]))
    with torch.no_grad():  # train-mode passes give BN real statistics, so activations have real ranges
        model.train()
        for _ in range(3):
            model(batch)
    model.eval()
    recipe = _recipe(output_stride, head)
    fp32, ptq = folder / f"fp32_{head}_os{output_stride}.pt", folder / f"ptq_{head}_os{output_stride}.pt"
    save_checkpoint(fp32, model=model, recipe=recipe, classes=SYNTHETIC)
    q = quantize(model, {"method": "percentile", "percentile": 99.99}, array_loop(lambda i: source.load(i)[0], len(source), SIZE))
    save_checkpoint(
        ptq,
        model=q,
        recipe=recipe,
        classes=SYNTHETIC,
        quant=quant_state(q),
        quant_meta={"method": "percentile", "calib_list": "synthetic:train", "num_images": len(source), "qat": False},
    )
    return fp32, ptq


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {os_: _checkpoints(folder, os_) for os_ in (8, 16, 32)}


def _val_images(n: int = 2) -> list[np.ndarray]:
    source = open_source("synthetic", None, "val", SYNTH)
    return [preprocess(source.load(i)[0], SIZE) for i in range(n)]


def _torch_logits(ckpt: Path, images: list[np.ndarray], quantized: bool) -> np.ndarray:
    from edgeseg.export.common import float_model_of

    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    model.set_input_size(SIZE)
    model = model if quantized else float_model_of(model)
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x)).numpy() for x in images])


def _export(ckpt: Path, target: str, precision: str, out: Path, size: tuple[int, int] = SIZE, **options: object) -> tuple[Path, dict]:
    result = export_artifact(ExportRequest(checkpoint=ckpt, precision=precision, out_dir=out, options=dict(options)), target)
    assert result.folder is not None
    return result.folder, read_meta(result.folder, target=target, input_size=size)


def _preflight_counts(folder: Path) -> dict[str, str]:
    heads = [ln for ln in (folder / "preflight.txt").read_text().splitlines() if ln.startswith("# TensorRT")]
    return {h.split()[2]: h.split(": ", 1)[1] for h in heads}


def test_export_all_int8_cli(ckpts: dict, tmp_path: Path) -> None:
    """`edgeseg export --target all`: every target's artifact, verified, from one PTQ checkpoint."""
    ptq = ckpts[16][1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "edgeseg", "export", str(ptq), "--target", "all", "--precision", "int8", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["coreml_int8_os16", "jetson_int8_os16", "onnx_int8_os16", "openvino_int8_os16"]
    for name in folders:
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        required = {k for k, f in ArtifactMeta.model_fields.items() if f.is_required()}
        assert required <= set(meta) and meta["precision"] == "int8" and meta["output_stride"] == 16
        assert meta.get("float_layers", []) == []  # no --keep-float: every layer INT8
        assert meta["quant"]["method"] == "percentile" and meta["classes"]["names"] == list(SYNTHETIC.names)
        assert f"edgeseg bench {tmp_path / name} --json results.json" in (tmp_path / name / "README.md").read_text()
    ov = json.loads((tmp_path / "openvino_int8_os16" / "meta.json").read_text())
    v = ov["verification"]
    assert ov["precision_hint"] == "f32" and v["argmax_agreement"] >= 0.99 and v["weighted_layers_int8"] == v["weighted_layers"] > 60
    report = json.loads((tmp_path / "openvino_int8_os16" / "precision_report.json").read_text())
    assert report["fallbacks"] == [] and set(report["summary"]["Convolution"]) <= {"u8", "i8"}
    assert _preflight_counts(tmp_path / "jetson_int8_os16") == {"10.x": "0 errors, 0 warnings", "11.x": "0 errors, 0 warnings"}
    cm = json.loads((tmp_path / "coreml_int8_os16" / "meta.json").read_text())["coreml"]
    assert cm["convs"] == cm["convs_int8_weights"] == cm["convs_int8_inputs"] > 60
    assert "wrote" in run.stdout and "preflight" in run.stdout

    # The IR (uint8 NHWC frame in, class map out) through its runner against PyTorch's fake-quant
    # model's argmax (an independent reference).
    from edgeseg.export.openvino import TARGET

    assert ov["io"]["input"] == "image" and ov["io"]["output"] == "labels"
    source = open_source("synthetic", None, "val", SYNTH)
    frames = [source.load(i)[0] for i in range(2)]
    runner = TARGET.load(tmp_path / "openvino_int8_os16", ov).runner
    got = np.concatenate([runner.run(f[None]).copy() for f in frames])  # bench runners return a view
    want = _torch_logits(ptq, [preprocess(f, SIZE) for f in frames], quantized=True).argmax(1)
    assert got.dtype == np.uint8 and (got == want).mean() >= 0.99


@pytest.mark.parametrize("output_stride", [8, 32])
def test_int8_openvino_and_jetson_at_output_stride(ckpts: dict, tmp_path: Path, output_stride: int) -> None:
    ptq = ckpts[output_stride][1]
    exact = output_stride == 32  # --exact-grid: the IR keeps the Q/DQ ONNX's signed grid
    folder, meta = _export(ptq, "openvino", "int8", tmp_path, exact_grid=exact)
    v = meta["verification"]
    assert folder.name == f"openvino_int8_os{output_stride}" and meta["output_stride"] == output_stride
    assert v["argmax_agreement"] >= 0.99 and v["weighted_layers_int8"] == v["weighted_layers"]
    lowering = meta["openvino_lowering"]
    assert lowering["exact_grid"] == exact
    # MobileNetV2 + DeepLabV3+: 34 ReLU6 outputs, 13 ReLU outputs and the upsampled ASPP output.
    assert lowering["unsigned_activations"] == (0 if exact else 48)
    # The lowered IR is verified twice: its signed-grid twin (the conversion), then itself.
    assert (v["exact_grid_agreement"] is None) if exact else (v["exact_grid_agreement"] >= 0.98)
    jfolder, jmeta = _export(ptq, "jetson", "int8", tmp_path)
    counts = _preflight_counts(jfolder)
    assert counts["10.x"].startswith("0 errors") and counts["11.x"].startswith("0 errors")
    build = json.loads((jfolder / "build.json").read_text())
    assert build["strongly_typed"] == {"10": True, "11": True} and "--stronglyTyped" in build["trtexec"]["10"]
    graph = onnx.load(str(jfolder / "model.onnx")).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 60


def test_depthwise_low_level_head_int8_openvino_and_jetson(tmp_path: Path) -> None:
    """model.head deeplabv3plus_dw: the decoder reads a tensor the encoder quantized already (the
    stride-4 block's depthwise output, read also by the block's projection). Every conv still runs
    INT8 in OpenVINO, the IR agrees with PyTorch's fake-quant model, and the Jetson bundle passes
    the TensorRT preflight (one scale for the tensor's two readers)."""
    _, ptq = _checkpoints(tmp_path, 16, head="deeplabv3plus_dw")
    model = model_from_checkpoint(load_checkpoint(ptq))
    assert model.head_name == "deeplabv3plus_dw" and model.decoder.low_proj[0].in_channels == 48  # 8 x 6 at width 0.35
    folder, meta = _export(ptq, "openvino", "int8", tmp_path / "out", input="tensor", output="logits")
    v = meta["verification"]
    assert v["argmax_agreement"] >= 0.99 and v["weighted_layers_int8"] == v["weighted_layers"] > 60
    from edgeseg.export.openvino import TARGET

    images = _val_images()
    got = np.concatenate([TARGET.load(folder, meta).runner.run(x).copy() for x in images]).argmax(1)
    want = _torch_logits(ptq, images, quantized=True).argmax(1)
    assert (got == want).mean() >= 0.99
    jfolder, _ = _export(ptq, "jetson", "int8", tmp_path / "out")
    assert _preflight_counts(jfolder) == {"10.x": "0 errors, 0 warnings", "11.x": "0 errors, 0 warnings"}
    pytest.importorskip("coremltools")
    _, cmeta = _export(ptq, "coreml", "int8", tmp_path / "out")
    cm = cmeta["coreml"]
    assert cm["convs"] == cm["convs_int8_weights"] == cm["convs_int8_inputs"] > 60


def test_openvino_fp32_and_fp16(ckpts: dict, tmp_path: Path) -> None:
    fp32 = ckpts[16][0]
    folder, meta = _export(fp32, "openvino", "fp32", tmp_path, input="tensor", output="logits")  # logits, to compare with torch's
    assert meta["precision_hint"] == "f32" and meta["quant"] is None
    from edgeseg.export.openvino import TARGET

    images = _val_images()
    runner = TARGET.load(folder, meta).runner
    got = np.concatenate([runner.run(x).copy() for x in images])  # bench runners return a view
    ref = _torch_logits(fp32, images, quantized=False)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    folder16, meta16 = _export(fp32, "openvino", "fp16", tmp_path)
    v16 = meta16["verification"]
    assert meta16["precision_hint"] in ("f16", "bf16") and v16["argmax_agreement"] >= 0.995 and v16["verified_with_hint"] == "f32"
    report16 = json.loads((folder16 / "precision_report.json").read_text())
    assert report16["deployed"]["hint"] == meta16["precision_hint"] and 0.9 < v16["deployed_hint_agreement"] <= 1.0
    if meta16["precision_hint"] == "bf16":  # this CPU: the deployed run executes the convolutions in bf16
        assert set(report16["deployed"]["summary"]["Convolution"]) == {"bf16"}
    # Weights compressed to FP16: the weight file is about half the FP32 one.
    ratio = (folder16 / "model.bin").stat().st_size / (folder / "model.bin").stat().st_size
    assert 0.45 < ratio < 0.6


def test_openvino_nncf_ptq(ckpts: dict, tmp_path: Path) -> None:
    folder, meta = _export(ckpts[16][0], "openvino", "int8", tmp_path, ptq="nncf")
    assert folder.name == "openvino_int8_os16_nncf"
    assert meta["quant"]["method"] == "nncf" and meta["quant"]["num_images"] == 8
    v = meta["verification"]
    assert v["reference"] == "onnxruntime FP32 ONNX" and v["weighted_layers_int8"] == v["weighted_layers"] > 60


def test_openvino_fallback_is_detected(tmp_path: Path) -> None:
    """A Q/DQ model with one convolution left float: listed, and fatal without allow_fallback."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeseg.export.common import onnx_reference
    from edgeseg.export.openvino_ir import ir_from_onnx, verify_ir

    model = build_model(num_classes=3, output_stride=16, width_mult=0.35).eval()
    model.set_input_size(SIZE)
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(
        model, (torch.randn(1, 3, *SIZE),), str(fp32), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"]
    )
    convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    images = _val_images(3)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images)

        def get_next(self) -> dict | None:
            x = next(self.items, None)
            return None if x is None else {"input": x}

    qdq = tmp_path / "qdq.onnx"
    quantize_static(
        str(fp32),
        str(qdq),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=[convs[5]],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    xml, _ = ir_from_onnx(qdq, tmp_path, precision="int8")
    ref = onnx_reference(qdq, images)
    with pytest.raises(TargetError, match="do not run in INT8 on OpenVINO.*--allow-fallback"):
        verify_ir(xml, ref, images, hint="f32", int8=True)
    report = verify_ir(xml, ref, images, hint="f32", int8=True, allow_fallback=True)
    assert len(report["fallbacks"]) >= 1 and report["weighted_layers_int8"] == report["weighted_layers"] - len(report["fallbacks"])
    assert any(convs[5] in f["original"] or convs[5] in f["name"] for f in report["fallbacks"])


def test_jetson_fp16_bundle_with_dla(ckpts: dict, tmp_path: Path) -> None:
    folder, meta = _export(ckpts[16][0], "jetson", "fp16", tmp_path, dla=0)
    half = onnx.load(str(folder / "model_fp16.onnx"))
    assert {i.data_type for i in half.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)} == {
        onnx.TensorProto.FLOAT16
    }
    # The I/O kept as exported: uint8 pixels in, the int32 class map out.
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert meta["verification"]["fp16_onnx"]["argmax_agreement"] >= 0.995
    build = json.loads((folder / "build.json").read_text())
    assert build["dla_core"] == 0 and build["onnx"]["11"] == "model_fp16.onnx"
    assert "--fp16 --useDLACore=0 --allowGPUFallback" in build["trtexec"]["10"]
    counts = _preflight_counts(folder)
    assert counts["10.x"].startswith("0 errors") and counts["11.x"].startswith("0 errors, ") and not counts["11.x"].endswith(" 0 warnings")


def test_coreml_fp16_spec(ckpts: dict, tmp_path: Path) -> None:
    from edgeseg.export.coreml import inspect_mlpackage

    folder, meta = _export(ckpts[8][0], "coreml", "fp16", tmp_path)
    info = inspect_mlpackage(folder / meta["model_file"])
    assert info["inputs"] == {"image": {"type": "imageType", "height": 64, "width": 64}}
    assert info["outputs"] == {"logits": {"shape": [1, 5, 64, 64], "dtype": "FLOAT32"}} and info["argmax"] == []
    assert info["convs"] > 60 and info["convs_int8_weights"] == 0 and "quantize" not in info["ops"]
    assert json.loads(info["metadata"]["edgeseg.classes"]) == list(SYNTHETIC.names) and info["metadata"]["edgeseg.output_stride"] == "8"
    assert info["opset"] == "CoreML7"  # iOS 17 / macOS 14


def test_coreml_w8_spec(ckpts: dict, tmp_path: Path) -> None:
    """W8: every conv weight int8 (per channel), every activation FP16 (no quantize ops), and the
    package about half the FP16 one; the folder and meta name it."""
    from edgeseg.export.coreml import inspect_mlpackage

    fp16, _ = _export(ckpts[16][0], "coreml", "fp16", tmp_path)
    folder, meta = _export(ckpts[16][0], "coreml", "w8", tmp_path)
    assert folder.name == "coreml_w8_os16" and meta["precision"] == "w8" and meta["quant"] is None
    info = inspect_mlpackage(folder / meta["model_file"])
    assert info["convs"] > 60 and info["convs_int8_weights"] == info["convs"] and info["convs_int8_inputs"] == 0
    assert "quantize" not in info["ops"]
    assert meta["coreml"]["compute_precision"] == "float16" and meta["coreml"]["weights"] == "int8 (per channel)"

    def size(f: Path) -> int:
        return sum(p.stat().st_size for p in (f / "model.mlpackage").rglob("*") if p.is_file())

    assert size(folder) < 0.7 * size(fp16)


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML prediction needs macOS")
def test_coreml_prediction_matches_onnxruntime(ckpts: dict, tmp_path: Path) -> None:
    from edgeseg.export.coreml import TARGET

    folder, meta = _export(ckpts[16][0], "coreml", "fp16", tmp_path)
    images = _val_images()
    runner = TARGET.load(folder, meta).runner
    got = np.concatenate([runner.run(x).copy() for x in images])  # bench runners return a view
    assert argmax_agreement(got, _torch_logits(ckpts[16][0], images, quantized=False)) >= 0.99


def _has_gpu() -> bool:
    try:
        from cuda.bindings import runtime as cudart

        err, count = cudart.cudaGetDeviceCount()
        return err == cudart.cudaError_t.cudaSuccess and count > 0
    except Exception:  # noqa: BLE001
        return False


def test_tensorrt_engine_build_and_run(ckpts: dict, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="tensorrt is not installed / no NVIDIA GPU")
    if not _has_gpu():
        pytest.skip("tensorrt is not installed / no NVIDIA GPU")
    from edgeseg.export.tensorrt import TARGET

    folder, meta = _export(ckpts[16][1], "jetson", "int8", tmp_path, build_engine=True)
    assert (folder / "model.engine").is_file() and (folder / "build.log").is_file()
    images = _val_images()
    runner = TARGET.load(folder, meta).runner
    got = np.concatenate([runner.run(x).copy() for x in images])  # bench runners return a view
    assert argmax_agreement(got, _torch_logits(ckpts[16][1], images, quantized=True)) >= 0.99
