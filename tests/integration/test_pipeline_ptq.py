"""`edgeseg pipeline` without QAT takes its PTQ branch (calibrate fp32.pt into ptq.pt, export INT8
from it), and an export that fails no longer passes silently: the other artifacts are still
exported, benched and reported, then the run exits 2 with one line naming every failed export."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.data.preprocess import preprocess
from edgeseg.data.synthetic import make_scene
from edgeseg.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SETTINGS = [
    "data.synthetic_num_train=8",
    "data.synthetic_num_val=2",
    "data.synthetic_size=[64,64]",
    "data.crop_size=[64,64]",
    "export.input_size=[64,64]",
    "model.width_mult=0.35",
    "train.epochs=1",
    "train.batch_size=4",
    "train.amp=false",
    "train.channels_last=false",
    "quant.enabled=false",  # no QAT: best.pt is FP32, so INT8 artifacts need the PTQ branch
    "quant.calib_num_images=2",
    "bench.warmup=1",
]


def _args(out: Path, strides: str = "16") -> list[str]:
    args = ["pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(out), "--targets", "onnx,jetson"]
    args += ["--output-strides", strides, "--runs", "2", "--limit", "2"]
    return args + [a for s in SETTINGS for a in ("--set", s)]


def _run(out: Path, strides: str = "16") -> tuple[int, list[str], str]:
    """The pipeline as a process: (exit code, stage lines, stderr)."""
    tmp = out.parent / f"{out.name}.systmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp), "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-m", "edgeseg", *_args(out, strides)], env=env, capture_output=True, cwd=REPO, text=True)
    return proc.returncode, _stage_lines(proc.stderr), proc.stderr


def _stage_lines(text: str) -> list[str]:
    """Stage lines without their seconds column: 'calibrate percentile on 2 images -> ...'."""
    stages = ("train", "calibrate", "export", "bench", "report", "done")
    return [" ".join(ln.split()[:1] + ln.split()[2:]) for ln in text.splitlines() if ln.split()[:1] and ln.split()[0] in stages]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(out: Path) -> set[tuple[str, int, str]]:
    return {(Path(r["artifact"]).name, r["output_stride"], r["runtime"]) for r in json.loads((out / "results.json").read_text())["rows"]}


@pytest.fixture(scope="module")
def ptq_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("pipeline_ptq") / "run"
    code, lines, err = _run(out)
    assert code == 0, err[-3000:]
    return out, lines


def _input_scale(onnx_path: Path) -> float:
    """Scale of the QuantizeLinear that reads the normalised image (the model's first quantizer):
    the graph input, or behind the uint8 input's Cast/Sub/Mul when the bundle takes pixels."""
    graph = onnx.load(str(onnx_path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    normalised = next((n.output[0] for n in graph.node if n.name == "edgeseg_divide_std"), graph.input[0].name)
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == normalised)
    return float(consts[q.input[1]])


def test_ptq_branch_calibrates_fp32_and_exports_int8_from_it(ptq_run: tuple[Path, list[str]]) -> None:
    out, lines = ptq_run
    assert [ln for ln in lines if ln.startswith("train ")][0] == "train FP32"  # no QAT stage
    assert f"calibrate percentile on 2 images -> {out / 'ptq.pt'}" in lines, lines
    assert not load_checkpoint(out / "best.pt").get("quant")
    ptq = load_checkpoint(out / "ptq.pt")
    assert ptq["quant_meta"] == {
        "method": "percentile",
        "calib_list": "synthetic:train",
        "num_images": 2,
        "qat": False,
        "percentile": 99.99,
    }
    assert json.loads((out / "pipeline.json").read_text())["calibrate"] == {"source_sha256": _sha(out / "fp32.pt")}

    # The INT8 artifact comes from ptq.pt, the FP32 one from fp32.pt.
    jetson = json.loads((out / "export/jetson_int8_os16/meta.json").read_text())
    assert jetson["source_checkpoint_sha256"] == _sha(out / "ptq.pt") and jetson["quant"] == ptq["quant_meta"]
    onnx_meta = json.loads((out / "export/onnx_fp32_os16/meta.json").read_text())
    assert onnx_meta["source_checkpoint_sha256"] == _sha(out / "fp32.pt") and onnx_meta["quant"] is None

    # ptq.pt's input range by hand: the 99.99th percentile of |x| over the two calibration images
    # (train scenes 0 and 7, spread over the split), to within two histogram bins.
    images = [preprocess(make_scene(0, i, (64, 64))[0]) for i in (0, 7)]
    a = np.abs(np.concatenate([x.ravel() for x in images]))
    amax = float(ptq["model"]["encoder.input_q.amax"])
    width = float(np.abs(images[0]).max()) / 2048  # the histogram's bin width, set by the first image
    assert abs(amax - float(np.percentile(a, 99.99))) <= 2 * width
    # ...and it is the scale of the exported graph's first QuantizeLinear (amax / 127, stored in FP16:
    # the Jetson bundle's float regions and Q/DQ scales are FP16).
    assert _input_scale(out / "export/jetson_int8_os16/model.onnx") == float(np.float16(np.float32(amax) / np.float32(127)))

    # TensorRT cannot run here: the jetson artifact is listed, not benched.
    assert _rows(out) == {("fp32.pt", 16, "torch"), ("onnx_fp32_os16", 16, "onnxruntime")}
    assert any(ln.startswith("bench jetson_int8_os16: not run here") for ln in lines), lines


def test_rerun_skips_calibration(ptq_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(ptq_run[0], out)
    mtime = (out / "ptq.pt").stat().st_mtime_ns
    code, lines, err = _run(out)
    assert code == 0, err[-3000:]
    assert f"calibrate skipped: {out / 'ptq.pt'} is from this fp32.pt" in lines, lines
    assert (out / "ptq.pt").stat().st_mtime_ns == mtime
    assert not [ln for ln in lines if ln.split()[0] in ("train", "export") and "skipped" not in ln], lines


def test_failed_export_exits_2_after_the_other_artifacts_ran(
    ptq_run: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TensorRT 10 whose ONNX parser stops at opset 16: both Jetson exports fail their preflight.

    The run used to print 'failed' and exit 0. Now the OS32 ONNX artifact (exported after the first
    failure) is still exported, benched and reported, and the run exits 2 with one error line.
    """
    from edgeseg.cli import main
    from edgeseg.cli_render import console
    from edgeseg.export.preflight_graph import OPSET_RANGE

    out = tmp_path / "run"
    shutil.copytree(ptq_run[0], out)
    shutil.rmtree(out / "export/jetson_int8_os16")
    monkeypatch.setitem(OPSET_RANGE, 10, (9, 16))
    monkeypatch.setattr(console, "_width", 1000)  # one event a line
    monkeypatch.setattr(sys, "argv", ["edgeseg", *_args(out, "16,32")])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    lines = _stage_lines(err)
    assert info.value.code == 2, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
    assert errors[0].startswith(
        "error: 2 export(s) failed: jetson_int8_os16, jetson_int8_os32 (first, jetson_int8_os16: TensorRT 10 preflight"
    )
    # 19: the Jetson INT8 bundle's opset (FP16 Q/DQ scales)
    assert "opset 19 is outside TensorRT 10.x's range 9-16" in errors[0] and str(out / "report/report.md") in errors[0]
    assert [ln.split()[1] for ln in lines if ln.startswith("export") and "failed" in ln] == ["jetson_int8_os16:", "jetson_int8_os32:"]
    assert not [ln for ln in lines if ln.startswith("done")]
    # What came after the first failure still ran: OS32 exported, benched, reported.
    exports = [ln.split()[1] for ln in lines if ln.startswith("export") and "skipped" not in ln]
    assert exports == ["jetson_int8_os16:", "onnx_fp32_os32:", "jetson_int8_os32:"]
    assert sorted(p.name for p in (out / "export").iterdir()) == ["onnx_fp32_os16", "onnx_fp32_os32"]  # no half artifact
    want = {
        ("fp32.pt", 16, "torch"),
        ("onnx_fp32_os16", 16, "onnxruntime"),
        ("fp32.pt", 32, "torch"),
        ("onnx_fp32_os32", 32, "onnxruntime"),
    }
    assert _rows(out) == want
    report_rows = json.loads((out / "report/results.json").read_text())["rows"]
    assert {(Path(r["artifact"]).name, r["output_stride"]) for r in report_rows} == {(a, s) for a, s, _ in want}

    # With the fault gone, a re-run exports just the two missing artifacts and exits 0.
    monkeypatch.undo()
    code, lines, err = _run(out, "16,32")
    assert code == 0, err[-3000:]
    work = [ln.split()[1] for ln in lines if ln.startswith("export") and "skipped" not in ln]
    assert work == ["jetson_int8_os16:", "jetson_int8_os32:"] and lines[-1].startswith("done")
