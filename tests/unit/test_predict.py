"""`edgeseg predict` checks every input before it writes: a bad image or checkpoint leaves no --out folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgeseg.cli import app
from edgeseg.config import recipe_from_dict
from edgeseg.data.classes import SYNTHETIC
from edgeseg.data.synthetic import make_scene
from edgeseg.errors import CheckpointError, DataError
from edgeseg.models import build_model
from edgeseg.train.checkpoint import save_checkpoint


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A checkpoint, a good image and a file named like an image that is not one."""
    recipe = recipe_from_dict({"name": "tiny", "data": {"synthetic_size": [64, 64], "crop_size": [64, 64]}, "model": {"width_mult": 0.35}})
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "fp32.pt", model=build_model(num_classes=5, width_mult=0.35), recipe=recipe, classes=SYNTHETIC)
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(make_scene(0, 0, (64, 64))[0]).save(good)
    bad.write_text("not an image")
    return tmp_path / "fp32.pt", good, bad


def test_a_bad_image_after_a_good_one_writes_nothing(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ckpt, good, bad = inputs
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(ckpt), str(good), str(bad), "--out", str(out)])
    assert isinstance(result.exception, DataError)  # main() turns it into one red line and exit code 2
    assert str(result.exception) == (
        f"image '{bad}' cannot be decoded (UnidentifiedImageError: cannot identify image file '{bad}'); it is corrupt, "
        "truncated or not an image: replace or remove it"
    )
    assert not out.exists()  # not even an empty folder, and no mask for the good image


def test_a_bad_checkpoint_writes_nothing(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, good, _ = inputs
    (tmp_path / "x.pt").write_bytes(b"junk")
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "x.pt"), str(good), "--out", str(out)])
    assert isinstance(result.exception, CheckpointError)
    assert str(result.exception) == (
        f"'{tmp_path / 'x.pt'}' is not a readable checkpoint (struct.error: unpack requires a buffer of 4 bytes); "
        "pass a .pt written by edgeseg"
    )
    assert not out.exists()


def test_good_images_write_a_mask_and_an_overlay_each(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ckpt, good, _ = inputs
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(ckpt), str(good), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png"]
