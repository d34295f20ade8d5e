"""The shipped VOC and Cityscapes recipes train (2 iterations) on crafted files in each format's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.config import load_recipe
from edgeseg.data import classes as C
from edgeseg.train import fit

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "data.crop_size=[64,64]",
    "data.num_workers=0",
    "model.width_mult=0.35",
    "model.backbone_weights=null",
    "train.batch_size=2",
    "train.max_iters=2",
    "train.epochs=2",  # 3 images, batch 2: one iteration an epoch
    "train.warmup_iters=1",
    "train.log_every=1",
    "quant.enabled=false",
]


def _image(path: Path, seed: int, size: tuple[int, int] = (48, 80)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def _voc(root: Path) -> None:
    base = root / "VOCdevkit" / "VOC2012"
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    stems = [f"2007_00000{i}" for i in range(4)]
    palette = [v for c in C.VOC.colors for v in c] + [224, 224, 192] * (256 - len(C.VOC.colors))
    for i, stem in enumerate(stems):
        _image(base / "JPEGImages" / f"{stem}.jpg", i)
        mask = np.zeros((48, 80), np.uint8)
        mask[10:30, 20:60] = 1 + i % 20  # an object
        mask[30, :] = 255  # its void border
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            img = Image.fromarray(mask, mode="P")
            img.putpalette(palette)
            (base / folder).mkdir(exist_ok=True)
            img.save(base / folder / f"{stem}.png")
    (lists / "train_aug.txt").write_text("\n".join(stems[:3]) + "\n")
    (lists / "train.txt").write_text("\n".join(stems[:3]) + "\n")
    (lists / "val.txt").write_text(stems[3] + "\n")


def _cityscapes(root: Path) -> None:
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            stem = f"aachen_{i:06d}_000019"
            _image(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", i)
            ids = np.full((48, 80), 7, np.uint8)  # road
            ids[:10] = 23  # sky
            ids[20:30, 10:40] = 26  # car
            ids[40:] = 0  # unlabelled -> ignore
            path = root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(path)


@pytest.mark.parametrize(("recipe", "make", "classes"), [("voc_mnv2_os16", _voc, 21), ("cityscapes_mnv2_os16", _cityscapes, 19)])
def test_recipe_trains_two_iterations(recipe: str, make: object, classes: int, tmp_path: Path) -> None:
    data = tmp_path / "data"
    make(data)  # type: ignore[operator]
    r = load_recipe(REPO / "recipes" / f"{recipe}.yaml", [f"data.root={data}", *SMALL])
    results = fit(r, tmp_path / "run")
    assert results["fp32"]["iters"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_held_out"] is True
    rows = [line.split(",") for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert [int(row[2]) for row in rows if row[3]] == [1, 2]  # a loss row per iteration, finite
    assert all(np.isfinite(float(row[3])) for row in rows if row[3])
    from edgeseg.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "fp32.pt")["arch"]["num_classes"] == classes
