"""Data-parallel launch: `edgeseg train --nproc-per-node N` runs itself again under torchrun.

torchrun starts N copies of the same command, each with WORLD_SIZE, RANK and LOCAL_RANK set;
`fit` then joins them into one process group (see edgeseg.train._init_distributed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def torchrun_command(
    recipe: Path,
    run_dir: Path,
    *,
    nproc_per_node: int,
    overrides: list[str] | None = None,
    resume: bool = False,
    qat: bool | None = None,
    init: Path | None = None,
) -> list[str]:
    """The torchrun command that runs `edgeseg train` with these options in `nproc_per_node` processes."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "edgeseg",
        "train",
        str(recipe),
        "--out",
        str(run_dir),
    ]
    cmd += [a for s in (overrides or []) for a in ("--set", s)] + (["--resume"] if resume else [])
    cmd += [] if qat is None else (["--qat"] if qat else ["--no-qat"])
    cmd += ["--init", str(init)] if init else []
    return cmd


def launch(recipe: Path, run_dir: Path, *, nproc_per_node: int, **train_options: Any) -> int | None:
    """Run this training in `nproc_per_node` processes under torchrun and return torchrun's exit code.

    `train_options` are torchrun_command's (overrides, resume, qat, init).
    Returns None, launching nothing, when this process trains itself: one process was asked
    for, or this process is already one of torchrun's (WORLD_SIZE is set).
    """
    if nproc_per_node <= 1 or "WORLD_SIZE" in os.environ:
        return None
    cmd = torchrun_command(recipe, run_dir, nproc_per_node=nproc_per_node, **train_options)
    return subprocess.call(cmd)
