"""Two-process data-parallel training (gloo on CPU) through `edgeseg train --nproc-per-node 2`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint
from edgeseg.train.guards import weights_digest

REPO = Path(__file__).resolve().parents[2]
TINY_SET = [
    "data.synthetic_num_train=16", "data.synthetic_num_val=2", "data.synthetic_size=[64, 64]", "data.crop_size=[64, 64]",
    "train.batch_size=4", "train.epochs=2", "train.amp=false", "quant.enabled=false",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_two_processes_end_with_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "edgeseg", "train", str(REPO / "recipes" / "smoke.yaml"), "--out", str(out), "--nproc-per-node", "2"]
    cmd += [a for s in TINY_SET for a in ("--set", s)]
    # torchrun reads PET_* variables for its options: a free port, so parallel test runs do not collide.
    env = {**os.environ, "PET_MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    fp32 = summary["fp32"]
    # 16 images over 2 ranks in batches of 4: 2 steps an epoch, 2 epochs.
    assert fp32["iters"] == 4
    # Every rank reported the digest of its own final weights; the trainer checked they agree.
    assert len(fp32["rank_weights_sha256"]) == 2
    assert fp32["rank_weights_sha256"][0] == fp32["rank_weights_sha256"][1]
    # ...and rank 0 saved exactly those weights.
    last = load_checkpoint(out / "last.pt")
    assert last["iteration"] == 4
    assert weights_digest(model_from_checkpoint(last)) == fp32["rank_weights_sha256"][0]
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
