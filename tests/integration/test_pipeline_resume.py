"""`edgeseg pipeline` resumes from what its run folder holds: a second run skips every stage and
writes nothing, a deleted artifact is the only one exported and benched again, and runs killed
(SIGKILL) in training, export and bench are completed by a re-run into the same report rows."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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
    "quant.enabled=true",
    "quant.epochs=1",
    "quant.max_iters=2",
    "quant.calib_num_images=4",
    "bench.warmup=1",
]
# onnx fp32 + openvino fp32/fp16/int8/int8-nncf at OS16, and the torch FP32 baseline.
ARTIFACTS = ["onnx_fp32_os16", "openvino_fp16_os16", "openvino_fp32_os16", "openvino_int8_os16", "openvino_int8_os16_nncf"]


def _cmd(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "edgeseg", "pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(out)]
    cmd += ["--targets", "onnx,openvino", "--output-strides", "16", "--runs", "3", "--limit", "2"]
    return cmd + [a for s in SETTINGS for a in ("--set", s)]


def _env(out: Path) -> dict[str, str]:
    tmp = out.parent / f"{out.name}.systmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp), "COLUMNS": "200"}


def _run(out: Path) -> list[str]:
    """Run the pipeline to the end; return its stage lines (stage, message)."""
    proc = subprocess.run(_cmd(out), env=_env(out), capture_output=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return _stage_lines(proc.stderr.decode())


def _stage_lines(text: str) -> list[str]:
    stages = ("train", "calibrate", "export", "bench", "report", "done")
    return [" ".join(line.split()[:1] + line.split()[2:]) for line in text.splitlines() if line.split()[:1] and line.split()[0] in stages]


def _snapshot(out: Path) -> dict[str, tuple[int, str]]:
    """Every file of the run folder: (mtime_ns, sha256)."""
    return {
        p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _report_rows(out: Path) -> set[tuple[str, str, str, int, str]]:
    rows = json.loads((out / "report/results.json").read_text())["rows"]
    return {(Path(r["artifact"]).name, r["target"], r["precision"], r["output_stride"], r["runtime"]) for r in rows}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    return out, _run(out)


def test_first_run_makes_every_artifact_row_and_report(finished: tuple[Path, list[str]]) -> None:
    out, lines = finished
    assert sorted(p.name for p in (out / "export").iterdir()) == ARTIFACTS  # nothing hidden left either
    assert _report_rows(out) == {("fp32.pt", "torch", "fp32", 16, "torch")} | {
        (name, name.split("_")[0], name.split("_")[1], 16, "onnxruntime" if name.startswith("onnx") else "openvino") for name in ARTIFACTS
    }
    assert not [line for line in lines if "skipped" in line], lines


def test_second_run_skips_every_stage_and_writes_nothing(finished: tuple[Path, list[str]], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)  # copy2 keeps mtimes
    before = _snapshot(out)
    lines = _run(out)
    work = [line for line in lines if "skipped" not in line and not line.startswith("done")]
    assert not work, f"stages that ran again: {work}"
    assert sum(line.startswith("export") for line in lines) == len(ARTIFACTS)
    assert sum(line.startswith("bench") for line in lines) == len(ARTIFACTS) + 1
    assert any(line.startswith("train skipped") for line in lines) and any(line.startswith("report skipped") for line in lines)
    assert _snapshot(out) == before  # no file rewritten: same mtimes, same bytes


def test_deleted_artifact_is_the_only_one_exported_and_benched_again(finished: tuple[Path, list[str]], tmp_path: Path) -> None:
    out, gone = tmp_path / "run", "openvino_fp16_os16"
    shutil.copytree(finished[0], out)
    old_rows = {r["row_id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    shutil.rmtree(out / "export" / gone)
    before = _snapshot(out)
    lines = _run(out)
    work = [line for line in lines if "skipped" not in line and line.split()[0] in ("train", "export", "bench")]
    assert [line.split()[:2] for line in work] == [["export", f"{gone}:"], ["bench", gone]], lines
    after = _snapshot(out)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert [k for k in changed if not k.startswith(f"export/{gone}/") and not k.startswith("report/")] == ["pipeline.json", "results.json"]
    assert {k for k in after if k.startswith(f"export/{gone}/")} <= set(changed)
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == len(ARTIFACTS) + 1
    kept = [r for r in rows if Path(r["artifact"]).name != gone]
    assert all(old_rows.get(r["row_id"]) == r for r in kept)  # the others are the very same rows
    assert _report_rows(out) == _report_rows(finished[0])


class _Watch:
    """Reads a process's stderr in the background; waits for a stage line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []  # type: ignore[var-annotated]
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    def wait_for(self, stage: str, timeout: float = 600) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if _stage_lines("".join(self.lines)) and any(line.startswith(stage) for line in _stage_lines("".join(self.lines))):
                return True
            time.sleep(0.05)
        return False


def test_sigkill_in_each_stage_then_rerun_completes_with_same_rows(finished: tuple[Path, list[str]], tmp_path: Path) -> None:
    out, rng, kills = tmp_path / "run", random.Random(6), []
    for stage, spread in (("train", 2.0), ("export", 8.0), ("bench", 1.5)):
        proc = subprocess.Popen(_cmd(out), env=_env(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        watch = _Watch(proc)
        if watch.wait_for(stage):
            time.sleep(rng.uniform(0.0, spread))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(stage)
        proc.wait()
        watch.thread.join(timeout=10)
        assert proc.returncode in (0, -signal.SIGKILL), "".join(watch.lines)[-3000:]
    assert len(kills) >= 2, f"only {kills} kills landed before the pipeline ended"
    lines = _run(out)
    assert lines[-1].startswith("done")
    assert _report_rows(out) == _report_rows(finished[0])
    assert sorted(p.name for p in (out / "export").iterdir()) == ARTIFACTS  # no half or stray folder
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    print(f"pipeline killed in {kills}; re-run: {lines}")
