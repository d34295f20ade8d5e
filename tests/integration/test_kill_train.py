"""SIGKILL `edgeseg train` at random moments: last.pt always loads, and the resumed run ends with
exactly the weights of an uninterrupted one (same seed, deterministic mode)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SETTINGS = [
    "data.synthetic_num_train=32",
    "data.synthetic_num_val=4",
    "data.synthetic_size=[64,64]",
    "data.crop_size=[64,64]",
    "model.width_mult=0.35",
    "train.epochs=4",
    "train.batch_size=4",
    "train.eval_every=4",
    "train.ckpt_every=1",
    "train.deterministic=true",
    "train.amp=false",
    "train.channels_last=false",
    "quant.enabled=false",
]


def _cmd(out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "edgeseg", "train", str(REPO / "recipes/smoke.yaml"), "--out", str(out)]
    for s in SETTINGS:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]


def _mtime(path: Path) -> float:
    return path.stat().st_mtime_ns if path.exists() else 0.0


def _run_until_checkpoint_then_kill(out: Path, rng: random.Random) -> tuple[bool, int]:
    """Start training; once it has written a new last.pt, wait a random moment and SIGKILL it.

    Returns (finished, returncode). Waiting for a fresh checkpoint first makes every cycle advance,
    whatever the machine's load; the random delay lands the kill anywhere, mid-write included.
    """
    before = _mtime(out / "last.pt")
    proc = subprocess.Popen(_cmd(out, before > 0), env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while proc.poll() is None and _mtime(out / "last.pt") == before and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
        err = proc.stderr.read().decode() if proc.stderr else ""
        # The kill before this one landed after the run had finished (summary and run.json written,
        # the process exiting): --resume refuses a finished run, which is the run being complete.
        if proc.returncode == 2 and "already finished" in err:
            return True, 0
        assert proc.returncode == 0, err[-2000:]
        return True, 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return False, -9


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, False), check=True, env=_env(), capture_output=True, cwd=REPO)
    reference = _final_state(ref)

    rng = random.Random(1234)
    kills = 0
    for run in range(3):
        out = tmp_path / f"run{run}"
        finished = False
        while not finished:
            finished, _ = _run_until_checkpoint_then_kill(out, rng)
            kills += not finished
            # Whatever moment the kill hit, last.pt is a whole checkpoint.
            ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
            assert "model" in ckpt and ckpt["iteration"] > 0
        state = _final_state(out)
        for key, value in reference.items():
            assert torch.equal(value, state[key]), f"{key} differs after kill/resume in run {run}"
    assert kills >= 20, f"only {kills} kills landed; lengthen the runs"


def test_sigint_saves_last_and_exits_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "int"
    proc = subprocess.Popen(_cmd(out, False), env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("training finished before SIGINT arrived")
    assert proc.returncode == 130
    lines = [line for line in err.decode().splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
    assert any("resume with --resume" in line for line in lines), err.decode()[-1000:]
    assert "Traceback" not in err.decode()
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] > 0


def test_sigterm_saves_like_ctrl_c_and_resumes(tmp_path: Path) -> None:
    """SIGTERM (a scheduler's pre-emption) stops at the end of a step: last.pt saved, one line,
    exit 143, no temporary file left; --resume then finishes the run."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, False), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists():  # wait for training to be under way (the first checkpoint)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "training wrote no checkpoint in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    text = err.decode()
    assert proc.returncode == 143, text[-2000:]  # 32 steps; SIGTERM came after the first
    assert "Traceback" not in text
    assert "saved" in text and "--resume" in text
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    torch.load(out / "last.pt", map_location="cpu", weights_only=True)  # a whole checkpoint
    done = subprocess.run(_cmd(out, True), env=_env(), capture_output=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (out / "summary.json").is_file()
