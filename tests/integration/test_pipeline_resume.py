"""`edgeseg pipeline` resumes from what its run folder holds: a second run skips every stage and
writes nothing, a deleted artifact is the only one exported and benched again, and runs killed
(SIGKILL) in training, export and bench are completed by a re-run into the same report rows.
Every kill follows an event (a line the pipeline prints, a file it writes), never a timed sleep."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeseg.export.artifacts import artifact_name
from edgeseg.pipeline import variants

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 1800  # a whole pipeline run: only a guard against a hang (as conftest.py's)
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
    "train.ckpt_every=1",  # last.pt after each step too: the training kill below waits for the first
    "quant.enabled=true",
    "quant.epochs=1",
    "quant.max_iters=2",
    "quant.calib_num_images=4",
    "bench.warmup=1",
]
# onnx fp32 + openvino fp32/fp16/int8/int8-nncf at OS16, and two rows in torch: the FP32 baseline
# and the QAT checkpoint (best.pt) with its weights run in float, what QAT did apart from INT8.
ARTIFACTS = ["onnx_fp32_os16", "openvino_fp16_os16", "openvino_fp32_os16", "openvino_int8_os16", "openvino_int8_os16_nncf"]
TORCH_ROWS = {("fp32.pt", "torch", "fp32", 16, "torch"), ("best.pt", "torch", "fp32", 16, "torch")}


def _cmd(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "edgeseg", "pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(out)]
    cmd += ["--targets", "onnx,openvino", "--output-strides", "16", "--runs", "3", "--limit", "2"]
    return cmd + [a for s in SETTINGS for a in ("--set", s)]


def _env(out: Path) -> dict[str, str]:
    tmp = out.parent / f"{out.name}.systmp"
    tmp.mkdir(exist_ok=True)
    # CI=true: OpenVINO's and NNCF's telemetry stay off (both skip CI). Otherwise they fork a process
    # from the threaded pipeline to send it; that child can hang on a lock copied in the fork (glibc's
    # resolver), keeps the pipeline from exiting, and holds its stderr open after a SIGKILL.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp), "COLUMNS": "200", "CI": "true"}


def _run(out: Path) -> list[str]:
    """Run the pipeline to the end; return its stage lines (stage, message)."""
    proc = subprocess.run(_cmd(out), env=_env(out), capture_output=True, cwd=REPO, timeout=RUN_TIMEOUT_S)
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
    assert _report_rows(out) == TORCH_ROWS | {
        (name, name.split("_")[0], name.split("_")[1], 16, "onnxruntime" if name.startswith("onnx") else "openvino") for name in ARTIFACTS
    }
    assert not [line for line in lines if "skipped" in line], lines


BASELINE = REPO / "tests" / "fixtures" / "results" / "smoke_pipeline_baseline.json"
# mIoU of the 2 val scenes is deterministic on the CPU; latency is gated only as each row's ratio to
# torch FP32 on the same run, loosely: a 2-core CI runs two test files at once.
GATE = ["--tolerance", "0.5", "--latency-tolerance", "3"]


def _gate(results: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgeseg", "report", str(results), "--out", str(out), "--baseline", str(BASELINE), *GATE]
    return subprocess.run(cmd, env=_env(out.parent / "gate"), capture_output=True, text=True, cwd=REPO, timeout=300)


def test_report_gate_against_the_committed_baseline(finished: tuple[Path, list[str]], tmp_path: Path) -> None:
    """The regression gate CI runs: this run's results pass against the committed baseline; the
    same results with one row 1 mIoU worse fail it, naming that row."""
    out, _ = finished
    ok = _gate(out / "results.json", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "no regression against" in " ".join(ok.stdout.split())
    doc = json.loads((out / "results.json").read_text())
    worse = next(r for r in doc["rows"] if r["precision"] == "int8" and r["quant_method"] == "qat")
    worse["miou"] -= 1.0
    worse["row_id"] = ""
    bad_file = tmp_path / "worse.json"
    bad_file.write_text(json.dumps(doc))
    bad = _gate(bad_file, tmp_path / "bad")
    text = " ".join(bad.stderr.split())
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert "OS16 INT8 (qat) OpenVINO (openvino," in text and "1 regression(s) against" in text


def test_second_run_skips_every_stage_and_writes_nothing(finished: tuple[Path, list[str]], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)  # copy2 keeps mtimes
    before = _snapshot(out)
    lines = _run(out)
    work = [line for line in lines if "skipped" not in line and not line.startswith("done")]
    assert not work, f"stages that ran again: {work}"
    assert sum(line.startswith("export") for line in lines) == len(ARTIFACTS)
    assert sum(line.startswith("bench") for line in lines) == len(ARTIFACTS) + len(TORCH_ROWS)
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
    assert len(rows) == len(ARTIFACTS) + len(TORCH_ROWS)
    kept = [r for r in rows if Path(r["artifact"]).name != gone]
    assert all(old_rows.get(r["row_id"]) == r for r in kept)  # the others are the very same rows
    assert _report_rows(out) == _report_rows(finished[0])


def _tmp_of(folder: Path) -> bool:
    """Whether atomic_dir is building `folder`: its temporary sibling `.NAME.PID-HOST.*.tmp` exists."""
    return any(p.name.startswith(f".{folder.name}.") and p.name.endswith(".tmp") for p in folder.parent.glob(".*.tmp"))


def _words(lines: list[str], stage: str) -> list[list[str]]:
    """The first two words (stage, then 'skipped:' or the artifact) of one stage's lines."""
    return [line.split()[:2] for line in lines if line.split()[0] == stage]


def _measured(out: Path) -> set[str]:
    """Names of the checkpoints and artifacts with a row in results.json."""
    results = out / "results.json"
    return {Path(r["artifact"]).name for r in json.loads(results.read_text())["rows"]} if results.exists() else set()


def _killed(child: Any) -> list[str]:
    """SIGKILL a running child; its stage lines."""
    assert child.send(signal.SIGKILL) == -signal.SIGKILL, "\n".join(child.lines[-20:])
    return _stage_lines("\n".join(child.lines))


def test_sigkill_in_each_stage_then_rerun_completes_with_same_rows(
    finished: tuple[Path, list[str]], tmp_path: Path, watch: Callable[..., Any]
) -> None:
    """Each SIGKILL follows an event the run prints or writes, with seconds of work of the same
    stage still ahead, so it lands in that stage whatever the machine's load: training (after its
    first checkpoint), an export (while the second artifact's temporary folder is being built) and
    bench (as it starts, after the last export is reported; then once the first row is saved).
    Each re-run resumes from what the killed one left, and the last one ends with the same rows."""
    out = tmp_path / "run"
    order = [artifact_name(v.target, v.precision, 16, v.ptq) for v in variants() if v.target in ("onnx", "openvino")]
    assert sorted(order) == ARTIFACTS
    benched = sorted([name for name, *_ in TORCH_ROWS] + order)

    # 1. Killed in training, right after its first checkpoint (fp32 step 1 of 2, then QAT).
    child = watch(_cmd(out), env=_env(out), cwd=REPO)
    child.wait_until(lambda: (out / "last.pt").exists(), "the first checkpoint (last.pt)")
    _killed(child)

    # 2. Resumes training; killed while it exports the second artifact.
    child = watch(_cmd(out), env=_env(out), cwd=REPO)
    child.wait_for_line(rf"^\s*export\s+\d+s {order[0]}: ")
    child.wait_until(lambda: _tmp_of(out / "export" / order[1]), f"the temporary folder of {order[1]}")
    lines = _killed(child)
    assert lines[0] == "train resuming from last.pt", lines
    assert _words(lines, "export") == [["export", f"{order[0]}:"]], lines

    # 3. Skips training and the first export, exports the others again (the killed one from
    # scratch); killed as bench starts.
    child = watch(_cmd(out), env=_env(out), cwd=REPO)
    child.wait_for_line(rf"^\s*export\s+\d+s {order[-1]}: ")
    lines = _killed(child)
    assert lines[0].startswith("train skipped: "), lines
    assert _words(lines, "export") == [["export", "skipped:"]] + [["export", f"{name}:"] for name in order[1:]], lines
    assert not (out / "report").exists()

    # 4. Killed in bench again, once it has saved a row (or more: the rows it measures together
    # are saved one after another).
    before = _measured(out)
    child = watch(_cmd(out), env=_env(out), cwd=REPO)
    child.wait_until(lambda: _measured(out) - before, "a bench row saved to results.json")
    lines = _killed(child)
    assert _words(lines, "export") == [["export", "skipped:"]] * len(order), lines
    measured = _measured(out)

    # 5. Completes: benches exactly the rows the killed runs did not save, then reports.
    lines = _run(out)
    assert lines[0].startswith("train skipped: ") and lines[-1].startswith("done "), lines
    assert _words(lines, "export") == [["export", "skipped:"]] * len(order), lines
    bench = _words(lines, "bench")
    assert sorted(w[1] for w in bench if w[1] != "skipped:") == [name for name in benched if name not in measured], lines
    assert len(bench) == len(benched), lines  # the others: one 'skipped: NAME OS16 ... already measured' line each
    assert _report_rows(out) == _report_rows(finished[0])
    assert len(json.loads((out / "results.json").read_text())["rows"]) == len(benched)  # one row each, none twice
    assert sorted(p.name for p in (out / "export").iterdir()) == ARTIFACTS  # the killed export's temporary folder is gone
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
