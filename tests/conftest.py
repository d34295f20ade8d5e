"""Shared fixtures: paths to the real data beside the checkout (tests skip where absent)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGESEG_SHARED", REPO.parent / "shared"))
CAMVID = SHARED / "data" / "camvid"
BACKBONE = SHARED / "weights" / "mobilenet_v2_imagenet.pth"

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set EDGESEG_SHARED to the folder holding data/camvid)")
    return CAMVID


@pytest.fixture(scope="session")
def backbone_weights() -> Path:
    if not BACKBONE.is_file():
        pytest.skip(f"ImageNet MobileNetV2 weights not found at {BACKBONE}")
    return BACKBONE


@pytest.fixture
def interrupt_at() -> Callable[[int], Callable[..., None]]:
    """interrupt_at(step): a training progress callback that presses CTRL-C (SIGINT) right after `step`."""

    def make(step: int) -> Callable[..., None]:
        def callback(event: str, **info: Any) -> None:
            if event == "step" and info["it"] == step:
                os.kill(os.getpid(), signal.SIGINT)

        return callback

    return make
