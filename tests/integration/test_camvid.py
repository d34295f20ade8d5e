"""The real CamVid data ($EDGESEG_SHARED/data/camvid, SegNet layout; see tests/conftest.py): counts,
classes, void, loaders. Skipped with the path where it is absent (a failure with EDGESEG_REQUIRE_SHARED=1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.config import load_recipe
from edgeseg.data import open_source
from edgeseg.data.classes import CAMVID
from edgeseg.data.dataset import eval_dataset, train_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_split_sizes_and_classes(camvid_root: Path) -> None:
    train, val = open_source("camvid", camvid_root, "train"), open_source("camvid", camvid_root, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.classes == CAMVID and train.classes.num_classes == 11
    assert train.classes.names[3] == "Road" and train.classes.ignore_index == 255
    assert not {train.name(i) for i in range(len(train))} & {val.name(i) for i in range(len(val))}


def test_every_val_pair_loads_and_void_becomes_ignore(camvid_root: Path) -> None:
    val = open_source("camvid", camvid_root, "val")
    counts = np.zeros(256, np.int64)
    for i in range(len(val)):
        image, mask = val.load(i)
        assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
        raw = np.asarray(Image.open(val.pairs[i][1]))
        np.testing.assert_array_equal(mask == 255, raw == 11)  # void 11 -> ignore, nothing else
        np.testing.assert_array_equal(mask[raw != 11], raw[raw != 11])
        counts += np.bincount(mask.ravel(), minlength=256)
    assert counts[11:255].sum() == 0 and counts[255] > 0
    # The class table is in the data's order: Road and Building cover the most pixels, the thin
    # classes (Pole, SignSymbol, Pedestrian) under 2% each.
    share = counts[:11] / counts[:11].sum()
    assert {int(c) for c in np.argsort(share)[-2:]} == {CAMVID.names.index("Road"), CAMVID.names.index("Building")}
    assert all(share[CAMVID.names.index(n)] < 0.02 for n in ("Pole", "SignSymbol", "Pedestrian"))
    assert (counts[:11] > 0).all()


def test_train_masks_are_valid(camvid_root: Path) -> None:
    train = open_source("camvid", camvid_root, "train")
    for i in range(0, len(train), 7):  # a spread of the split: every load validates size and values
        image, mask = train.load(i)
        assert image.shape[:2] == mask.shape == (360, 480)


def test_recipe_loaders(camvid_root: Path) -> None:
    recipe = load_recipe(REPO / "recipes" / "camvid_mnv2_os16.yaml", [f"data.root={camvid_root}"])
    train, val = train_dataset(recipe), eval_dataset(recipe)
    assert (len(train), len(val)) == (367, 101)
    crop = tuple(recipe.data.crop_size)
    for i in (0, 100):
        x, y = train[i]
        assert x.shape == (3, *crop) and y.shape == crop
        assert set(np.unique(y.numpy())) <= set(range(11)) | {255}
    x, y = val[0]
    assert x.shape == (3, 360, 480) and y.shape == (360, 480)
