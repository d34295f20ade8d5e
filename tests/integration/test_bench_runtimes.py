"""bench with real runtimes: onnxruntime and OpenVINO FP32 score the same mIoU as the torch eval of
the same model, bench runs where torch cannot be imported, and the report reads what bench wrote.

The artifacts are made here by hand (torch.onnx.export + openvino.convert_model + a meta.json),
so these tests depend on no exporter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeseg.bench import BenchOptions, bench_artifact, bench_into, load_results
from edgeseg.bench.stats import latency_stats
from edgeseg.config import Recipe, recipe_from_dict
from edgeseg.data.classes import CAMVID, SYNTHETIC
from edgeseg.data.dataset import eval_dataset
from edgeseg.errors import ConfigError, DataError
from edgeseg.models import build_model
from edgeseg.train.checkpoint import save_checkpoint
from edgeseg.train.evaluate import evaluate

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "results"
SIZE = (64, 64)
SYNTH = {"num_train": 8, "num_val": 6, "size": [72, 88], "seed": 0}  # images 72x88, model input 64x64: both resizes run
FAST = {"runs": 3, "warmup": 1, "threads": 1}


def _recipe(**data: Any) -> Recipe:
    base = {
        "format": "synthetic",
        "synthetic_num_train": SYNTH["num_train"],
        "synthetic_num_val": SYNTH["num_val"],
        "synthetic_size": SYNTH["size"],
        "synthetic_seed": SYNTH["seed"],
        "crop_size": list(SIZE),
        "eval_size": list(SIZE),
    }
    return recipe_from_dict(
        {"name": "bench-test", "data": {**base, **data}, "model": {"width_mult": 0.35}, "export": {"input_size": list(SIZE)}}
    )


def _model(num_classes: int, recipe: Recipe) -> torch.nn.Module:
    """A random tiny DeepLab whose BatchNorm statistics come from real images, so its predictions
    vary across the image (an untouched random net predicts one class everywhere)."""
    torch.manual_seed(0)
    model = build_model(num_classes=num_classes, width_mult=0.35, output_stride=16)
    ds = eval_dataset(recipe)
    batch = torch.stack([ds[i][0] for i in range(min(4, len(ds)))])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
    model.set_input_size(tuple(recipe.data.eval_size))  # type: ignore[arg-type]
    return model


def _meta(target: str, model_file: str, recipe: Recipe, classes: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    size = list(recipe.data.eval_size)  # type: ignore[arg-type]
    return {
        "schema_version": 1,
        "target": target,
        "precision": "fp32",
        "model_file": model_file,
        "input_name": "input",
        "output_name": "logits",
        "input_size": size,
        "output_stride": 16,
        "classes": classes,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "data": data,
        "quant": None,
        "source_checkpoint": None,
        "source_checkpoint_sha256": None,
        "recipe_hash": None,
        "tool_versions": {},
    }


def _export(
    model: torch.nn.Module, out: Path, recipe: Recipe, classes: dict[str, Any], data: dict[str, Any], dynamic: bool = False
) -> dict[str, Path]:
    """ONNX (onnxruntime) and OpenVINO IR artifacts of `model`, FP32."""
    import openvino as ov

    (out / "onnx").mkdir(parents=True)
    (out / "openvino").mkdir()
    x = torch.randn(1, 3, *recipe.data.eval_size)  # type: ignore[misc]
    axes = {"input": {0: "n"}, "logits": {0: "n"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(out / "onnx/model.onnx"),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            dynamic_axes=axes,
        )
    ov.save_model(ov.convert_model(str(out / "onnx/model.onnx")), str(out / "openvino/model.xml"), compress_to_fp16=False)
    for target, name in (("onnx", "model.onnx"), ("openvino", "model.xml")):
        (out / target / "meta.json").write_text(json.dumps(_meta(target, name, recipe, classes, data)))
    return {"onnx": out / "onnx", "openvino": out / "openvino"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench_synthetic")
    recipe = _recipe()
    model = _model(5, recipe)
    paths = _export(model, out, recipe, SYNTHETIC.to_dict(), {"format": "synthetic", "root": None, "split": "val", "synthetic": SYNTH})
    save_checkpoint(out / "model.pt", model=model, recipe=recipe, classes=SYNTHETIC)
    reference = evaluate(model, eval_dataset(recipe))
    return {"paths": paths, "pt": out / "model.pt", "reference": reference, "model": model, "recipe": recipe, "out": out}


@pytest.mark.parametrize("target", ["onnx", "openvino", "torch"])
def test_miou_equals_torch_eval(synthetic: dict[str, Any], target: str) -> None:
    """Each runtime's mIoU (numpy preprocessing, numpy logit resize) equals edgeseg.train.evaluate's."""
    path = synthetic["pt"] if target == "torch" else synthetic["paths"][target]
    row = bench_artifact(path, BenchOptions(**FAST))
    ref = synthetic["reference"]
    assert 5 < ref["miou"] < 95  # the model predicts several classes: a real comparison
    assert row.miou == pytest.approx(ref["miou"], abs=0.1)
    assert row.pixel_acc == pytest.approx(ref["pixel_acc"], abs=0.1)
    for name, value in ref["per_class_iou"].items():
        assert (row.per_class_iou[name] is None) == (value is None)
        if value is not None:
            assert row.per_class_iou[name] == pytest.approx(value, abs=0.5)
    assert row.num_images == SYNTH["num_val"] and row.input_shape == [1, 3, *SIZE]
    expected_runtime = {"onnx": "onnxruntime", "openvino": "openvino", "torch": "torch"}[target]
    assert row.runtime == expected_runtime and row.target == target and row.output_stride == 16


def test_row_statistics_match_its_samples(synthetic: dict[str, Any]) -> None:
    row = bench_artifact(synthetic["paths"]["openvino"], BenchOptions(runs=7, warmup=2, threads=1, accuracy=False))
    assert len(row.latency_samples_ms) == 7 and row.miou is None and row.num_images == 0
    expected = latency_stats(row.latency_samples_ms)
    for key in ("p50", "p90", "p99", "mean", "std"):
        assert row.latency[key] == pytest.approx(expected[key], abs=1e-3)
    assert row.latency["p50"] == pytest.approx(np.percentile(row.latency_samples_ms, 50), abs=1e-3)
    assert row.throughput == pytest.approx(7 / (sum(row.latency_samples_ms) / 1000), rel=1e-3)
    assert row.precision_hint == "f32"  # FP32 runs in f32, not the CPU's bf16 default
    assert row.threads == 1 and row.preprocess_ms is not None and row.postprocess_ms is not None
    assert row.first_inference_s > 0
    if sys.platform == "linux":
        assert row.peak_mem_mb is not None and row.peak_mem_mb > 0


def test_precision_hint_is_applied_and_recorded(synthetic: dict[str, Any]) -> None:
    import openvino as ov

    row = bench_artifact(synthetic["paths"]["openvino"], BenchOptions(**FAST, accuracy=False, precision_hint="bf16"))
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert row.precision_hint == ("bf16" if has_bf16 else "f32")  # read back from the compiled model
    ignored = bench_artifact(synthetic["paths"]["onnx"], BenchOptions(**FAST, accuracy=False, precision_hint="bf16"))
    assert ignored.precision_hint is None  # onnxruntime has no such setting: nothing is claimed


def test_static_batch_is_refused_with_the_fix(synthetic: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="--batch 1"):
        bench_artifact(synthetic["paths"]["onnx"], BenchOptions(**FAST, batch=2))


def test_batched_accuracy_equals_batch_one(synthetic: dict[str, Any], tmp_path: Path) -> None:
    """6 images in batches of 4: the padded last batch must not change any score."""
    recipe = synthetic["recipe"]
    data = {"format": "synthetic", "root": None, "split": "val", "synthetic": SYNTH}
    paths = _export(synthetic["model"], tmp_path, recipe, SYNTHETIC.to_dict(), data, dynamic=True)
    one = bench_artifact(paths["onnx"], BenchOptions(**FAST))
    four = bench_artifact(paths["onnx"], BenchOptions(**FAST, batch=4))
    assert four.input_shape == [4, 3, *SIZE] and four.num_images == 6
    assert four.miou == one.miou and four.per_class_iou == one.per_class_iou


def test_interleaved_rounds_keep_every_sample_and_score(synthetic: dict[str, Any], tmp_path: Path) -> None:
    """3 artifacts in 3 rounds of 2 runs: each row has its 6 samples, the p50 of each round's pair,
    the same mIoU as a bench of its own, and load/peak figures that bracket the others."""
    from edgeseg.bench import bench_interleaved

    paths = [synthetic["paths"]["onnx"], synthetic["paths"]["openvino"], synthetic["pt"]]
    rows = bench_interleaved(tmp_path / "r.json", paths, BenchOptions(**{**FAST, "runs": 5, "warmup": 2}), rounds=3)
    assert [r.runtime for r in rows] == ["onnxruntime", "openvino", "torch"] and len(load_results(tmp_path / "r.json")) == 3
    alone = bench_artifact(paths[0], BenchOptions(**FAST))
    for row in rows:
        assert row.runs == 6 and len(row.latency_samples_ms) == 6  # ceil(5 / 3) = 2 a round
        pairs = [row.latency_samples_ms[i : i + 2] for i in (0, 2, 4)]
        assert row.round_p50_ms == pytest.approx([sum(p) / 2 for p in pairs], abs=1e-3)
        assert row.load_s is not None and 0 < row.load_s <= row.first_inference_s
        assert "interleaved with 2 other artifact(s) in 3 rounds" in row.notes
        if sys.platform == "linux":
            assert row.peak_rss_mb is not None and row.peak_mem_mb is not None and row.peak_rss_mb >= row.peak_mem_mb
    assert rows[0].miou == alone.miou and rows[0].per_class_iou == alone.per_class_iou
    with pytest.raises(ConfigError, match=r"--rounds 7 is more than --runs 5"):
        bench_interleaved(tmp_path / "r.json", paths, BenchOptions(**{**FAST, "runs": 5}), rounds=7)
    with pytest.raises(ConfigError, match=r"--rounds 1 is out of range; use 2..100"):
        bench_interleaved(tmp_path / "r.json", paths, BenchOptions(**FAST), rounds=1)


def test_float_weights_row_runs_a_quantized_checkpoint_in_float(synthetic: dict[str, Any], tmp_path: Path) -> None:
    """bench --float-weights: the quantized checkpoint's weights with fake quantization off; its mIoU
    is torch eval of that float model, and it differs from the checkpoint's INT8 row."""
    from edgeseg.quant import quant_state, quantize, set_quant_enabled

    recipe, model = synthetic["recipe"], synthetic["model"]
    ds = eval_dataset(recipe)
    q = quantize(model, {"method": "max"}, lambda m: [m(ds[i][0][None]) for i in range(2)]).eval()
    q.edgeseg_quant["disabled"] = []
    ckpt = tmp_path / "q.pt"
    quant_meta = {"method": "max", "calib_list": "synthetic:val", "num_images": 2, "qat": True}
    save_checkpoint(ckpt, model=q, recipe=recipe, classes=SYNTHETIC, quant=quant_state(q), quant_meta=quant_meta)
    row = bench_artifact(ckpt, BenchOptions(**FAST, float_weights=True))
    int8 = bench_artifact(ckpt, BenchOptions(**FAST))
    set_quant_enabled(q, False)
    reference = evaluate(q, ds)
    assert row.precision == "fp32" and row.quant_method == "qat weights" and int8.precision == "fakequant"
    assert row.miou == pytest.approx(reference["miou"], abs=0.1)
    assert row.artifact_sha256 == int8.artifact_sha256 and row.row_id != int8.row_id
    with pytest.raises(ConfigError, match=r"--float-weights runs a quantized checkpoint in float; '.*model.pt' is already FP32"):
        bench_artifact(synthetic["pt"], BenchOptions(**FAST, float_weights=True))
    with pytest.raises(ConfigError, match=r"--float-weights applies to quantized .pt checkpoints only, not to the artifact"):
        bench_artifact(synthetic["paths"]["onnx"], BenchOptions(**FAST, float_weights=True))


def test_results_file_appends_and_merges(synthetic: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    first = bench_into(results, [synthetic["paths"]["onnx"]], BenchOptions(**FAST, accuracy=False))
    bench_into(results, [synthetic["paths"]["openvino"], synthetic["pt"]], BenchOptions(**FAST, accuracy=False))
    rows = load_results(results)
    assert [r.runtime for r in rows] == ["onnxruntime", "openvino", "torch"]
    assert rows[0].row_id == first[0].row_id
    assert json.loads(results.read_text())["schema_version"] == 1


def test_data_of_other_classes_is_refused(synthetic: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "three"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "a.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match="predicts 5 classes but data format 'folder' has 3"):
        bench_artifact(synthetic["paths"]["onnx"], BenchOptions(**FAST, data_format="folder", data_root=str(root)))
    with pytest.raises(ConfigError, match="pass --format too"):
        bench_artifact(synthetic["paths"]["onnx"], BenchOptions(**FAST, data_root=str(root)))


def _no_torch_env(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked by this test')\n")
    return {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}


def test_bench_runs_without_torch(synthetic: dict[str, Any], tmp_path: Path) -> None:
    env = _no_torch_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr
    results = tmp_path / "r.json"
    cmd = [
        sys.executable,
        "-m",
        "edgeseg",
        "bench",
        str(synthetic["paths"]["onnx"]),
        str(synthetic["paths"]["openvino"]),
        "--json",
        str(results),
        "--runs",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = load_results(results)
    assert [r.runtime for r in rows] == ["onnxruntime", "openvino"]
    for r in rows:
        assert r.miou == pytest.approx(synthetic["reference"]["miou"], abs=0.1)


def test_bench_error_without_torch_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgeseg", "bench", str(tmp_path / "missing"), "--json", str(tmp_path / "r.json")],
        env=_no_torch_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], done.stderr[-2000:]


def test_report_reads_bench_rows_and_the_jetson_fixture(synthetic: dict[str, Any], tmp_path: Path) -> None:
    from edgeseg.report import build_report

    results = tmp_path / "bench.json"
    bench_into(results, [synthetic["pt"], synthetic["paths"]["onnx"], synthetic["paths"]["openvino"]], BenchOptions(**FAST))
    written = build_report([results, FIXTURES / "jetson_orin_tensorrt.json"], tmp_path / "report")
    md = written["report.md"].read_text()
    assert "FP32 onnxruntime: " in md and "than FP32 torch for" in md  # same-device speed ratio against the torch row
    rows = {r["runtime"]: r for r in _csv(written["results.csv"])}
    assert abs(float(rows["onnxruntime"]["delta_miou"])) < 0.1 and abs(float(rows["openvino"]["delta_miou"])) < 0.1
    assert rows["torch"]["reference_row_id"] == rows["torch"]["row_id"]
    assert rows["tensorrt"]["l4t"] == "36.4.3"


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_camvid_accuracy_matches_torch_eval(camvid_root: Path, tmp_path: Path) -> None:
    """Real CamVid images (360x480) through a 128x160 input: numpy resize of image and logits vs torch."""
    recipe = _recipe(format="camvid", root=str(camvid_root), eval_size=[128, 160], crop_size=[128, 160])
    model = _model(11, recipe)
    paths = _export(model, tmp_path, recipe, CAMVID.to_dict(), {"format": "camvid", "root": str(camvid_root), "split": "val"})
    reference = evaluate(model, eval_dataset(recipe), limit=3)
    row = bench_artifact(paths["onnx"], BenchOptions(**FAST, limit=3))
    assert row.num_images == 3 and row.data == {"format": "camvid", "split": "val", "root": str(camvid_root)}
    assert row.miou == pytest.approx(reference["miou"], abs=0.1)
    assert row.pixel_acc == pytest.approx(reference["pixel_acc"], abs=0.1)
