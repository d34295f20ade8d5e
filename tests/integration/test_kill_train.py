"""Kill `edgeseg train` at events it reports (a checkpoint written), never after guessed sleeps:
SIGKILL leaves a last.pt that loads and the resumed runs end with exactly the weights of an
uninterrupted one (same seed, deterministic mode); SIGINT and SIGTERM save last.pt, print one line
and exit 130 / 143. Each signal follows an event with several training steps still to run, so it
lands in every run whatever the machine's load; a wait that sees no event fails, it never skips."""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
STEPS = 4 * 32 // 4  # epochs * images / batch
KILLS_PER_RUN = 4
LAST_KILL = STEPS - 8  # after the last planned kill at least one epoch (8 steps and an eval) is left
# What `edgeseg -v train` logs once a checkpoint is complete on disk (edgeseg/train/loop.py).
SAVED_LAST = r"saved (?P<path>.+/last\.pt) \(fp32 step (?P<step>\d+)\)$"


def _cmd(out: Path, resume: bool, verbose: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "edgeseg", *(["-v"] if verbose else []), "train", str(REPO / "recipes/smoke.yaml"), "--out", str(out)]
    for s in SETTINGS:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def _popen() -> dict[str, Any]:
    return {"env": {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, "cwd": REPO}


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _kill_plan(rng: random.Random) -> list[int]:
    """KILLS_PER_RUN distinct steps, all with an epoch of training after them."""
    return sorted(rng.sample(range(1, LAST_KILL + 1), KILLS_PER_RUN))


def _kill_after_checkpoint(watch: Callable[..., Any], out: Path, step: int, rng: random.Random) -> int:
    """Start (or resume) training, wait until it reports last.pt at `step` or later, SIGKILL it.

    The kill comes a random fraction of one step after the report (the time between this run's
    last two reports, measured here), so it lands anywhere in the next step, its checkpoint write
    included. Returns the step of the report.
    """
    child = watch(_cmd(out, resume=(out / "last.pt").exists(), verbose=True), **_popen())
    seen, when = 0, []
    while seen < step or len(when) < 2:
        seen = int(child.wait_for_line(SAVED_LAST)["step"])
        when.append(time.monotonic())
    time.sleep(rng.random() * (when[-1] - when[-2]))
    code = child.send(signal.SIGKILL)
    assert code == -signal.SIGKILL, f"the run was not running {STEPS - seen} steps before its end (exit {code})"
    return seen


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path, watch: Callable[..., Any]) -> None:
    ref = tmp_path / "ref"
    child = watch(_cmd(ref, resume=False, verbose=True), **_popen())
    assert child.exit_code() == 0, "\n".join(child.lines[-20:])
    reference = _load(ref / "last.pt")["model"]
    # The event the kills wait for: one line per last.pt write, naming the file, steps 1 to the end.
    saved = [m for m in (re.search(SAVED_LAST, ln) for ln in child.lines) if m]
    assert [(m["path"], int(m["step"])) for m in saved] == [(str(ref / "last.pt"), s) for s in range(1, STEPS + 1)]

    rng = random.Random(1234)
    for run in range(3):
        out = tmp_path / f"run{run}"
        for step in _kill_plan(rng):
            reported = _kill_after_checkpoint(watch, out, step, rng)
            # Whatever the kill hit (a step, a checkpoint write), last.pt is whole and no older
            # than the one reported complete.
            assert _load(out / "last.pt")["iteration"] >= reported
        child = watch(_cmd(out, resume=True), **_popen())
        assert child.exit_code() == 0, "\n".join(child.lines[-20:])
        state = _load(out / "last.pt")["model"]
        for key, value in reference.items():
            assert torch.equal(value, state[key]), f"{key} differs after kill/resume in run {run}"


def _stop_line(out: Path, step: int) -> str:
    return f"error: interrupted at fp32 step {step}/{STEPS}; saved {out / 'last.pt'}: resume with --resume"


def _messages(lines: list[str]) -> list[str]:
    """stderr without the progress bar's last state and library warnings (not edgeseg's lines)."""
    return [ln for ln in lines if ln.strip() and not ln.startswith("train fp32 ") and "warn" not in ln.lower()]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_last_and_exits_with_one_line(tmp_path: Path, watch: Callable[..., Any], sig: int, code: int) -> None:
    """CTRL-C (SIGINT) and a scheduler's pre-emption (SIGTERM) stop at the end of a step: last.pt
    saved, one line naming the step and the fix, no temporary file; --resume then finishes the run."""
    out = tmp_path / "run"
    child = watch(_cmd(out, resume=False), **_popen())
    # The first checkpoint (step 1 of 32) appearing: training is under way, with 31 steps to go.
    child.wait_until(lambda: (out / "last.pt").exists(), "first checkpoint (last.pt)")
    assert child.send(sig) == code, "\n".join(child.lines[-20:])
    step = _load(out / "last.pt")["iteration"]
    assert 1 <= step < STEPS
    assert _messages(child.lines) == [_stop_line(out, step)], "\n".join(child.lines)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    done = watch(_cmd(out, resume=True), **_popen())
    assert done.exit_code() == 0, "\n".join(done.lines[-20:])
    assert (out / "summary.json").is_file() and _load(out / "last.pt")["iteration"] == STEPS
