"""Joint transforms keep image and mask aligned; eval preprocessing; synthetic scenes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from edgeseg.config import recipe_from_dict
from edgeseg.data.dataset import EvalTransform, TrainTransform, eval_dataset, train_dataset
from edgeseg.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from edgeseg.data.synthetic import SyntheticSource, make_scene
from edgeseg.metrics import ConfusionMatrix

# Each class has its own pure colour: after any geometric transform, a pixel whose colour is still
# mostly one class colour (not an even blend at an edge) must carry that class in the mask. Masks
# resized with legacy 'nearest' (half a pixel off the image's bilinear grid) fail this.
CLASS_COLORS = np.array([(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)], np.float32)
BLOCK = 16


def _coded_scene(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    blocks = np.random.default_rng(seed).integers(0, len(CLASS_COLORS), (h // BLOCK, w // BLOCK))
    mask = np.kron(blocks, np.ones((BLOCK, BLOCK), np.int64)).astype(np.uint8)
    return CLASS_COLORS[mask].astype(np.uint8), mask


def _to_pixels(x: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: CxHxW float -> HxWx3 in 0..255."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x * std + mean) * 255).permute(1, 2, 0).numpy()


def _seeded(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def test_train_transform_keeps_image_and_mask_aligned() -> None:
    image, mask = _coded_scene()
    tf = TrainTransform((80, 96), (0.5, 2.0), hflip=True, jitter=0.0)
    padded_runs = pure_total = 0
    for seed in range(24):
        _seeded(seed)
        x, y = tf(image, mask)
        assert x.shape == (3, 80, 96) and y.shape == (80, 96) and y.dtype == torch.int64
        pixels, labels = _to_pixels(x), y.numpy()
        ignore = labels == 255
        # Padding: ignore in the mask, the mean pixel (0 after normalisation) in the image.
        assert np.abs(x.numpy()[:, ignore]).max(initial=0) < 0.02
        padded_runs += bool(ignore.any())
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 255}
        dist = np.linalg.norm(pixels[..., None, :] - CLASS_COLORS, axis=-1)
        # Class colours are >= 200 apart: within 40 of one means at least ~80% of that colour.
        nearest, pure = dist.argmin(-1), (dist.min(-1) < 40) & ~ignore
        mismatched = pure & (nearest != labels)
        assert not mismatched.any(), f"seed {seed}: {mismatched.sum()} pure pixels carry another class"
        pure_total += pure.sum()
        # Most labelled pixels are pure (block interiors), so the check above sees most of the crop.
        assert pure.sum() >= 0.6 * (~ignore).sum()
    assert padded_runs >= 2, "scales below crop/image size should have needed padding"
    assert pure_total > 24 * 80 * 96 * 0.4


def test_flip_moves_image_and_mask_together() -> None:
    image, mask = _coded_scene()
    tf = TrainTransform((96, 128), (1.0, 1.0), hflip=True, jitter=0.0)
    flipped = 0
    for seed in range(12):
        _seeded(seed)
        x, y = tf(image, mask)
        labels = y.numpy()
        if np.array_equal(labels, mask[:, ::-1]):
            flipped += 1
            expected_image = image[:, ::-1]
        else:
            np.testing.assert_array_equal(labels, mask)
            expected_image = image
        np.testing.assert_allclose(_to_pixels(x), expected_image, atol=0.01)
    assert 0 < flipped < 12


def test_colour_jitter_changes_only_the_image() -> None:
    image, mask = _coded_scene(seed=3)
    plain = TrainTransform((64, 64), (0.5, 2.0), hflip=True, jitter=0.0)
    jitter = TrainTransform((64, 64), (0.5, 2.0), hflip=True, jitter=0.4)
    for seed in range(4):
        _seeded(seed)
        x0, y0 = plain(image, mask)
        _seeded(seed)
        x1, y1 = jitter(image, mask)
        torch.testing.assert_close(y1, y0, rtol=0, atol=0)
        assert not torch.allclose(x1, x0)


def test_eval_transform_matches_numpy_preprocess() -> None:
    """bench/predict use the numpy path; it must equal training's eval transform."""
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = np.random.default_rng(1).integers(0, 3, (50, 70), dtype=np.uint8)
    for size in (None, (64, 96), (32, 48)):
        x, y = EvalTransform(size)(image, mask)
        ref = preprocess(image, size)
        assert ref.shape == (1, *x.shape)
        np.testing.assert_allclose(x.numpy(), ref[0], atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), mask)  # scored at the original size


# --- synthetic scenes -------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed_and_splits_differ() -> None:
    a, b = make_scene(0, 5, (64, 64)), make_scene(0, 5, (64, 64))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(make_scene(1, 5, (64, 64))[0], a[0])
    train, val = SyntheticSource("train", 4, (64, 48), 0), SyntheticSource("val", 4, (64, 48), 0)
    image, mask = train.load(0)
    assert image.shape == (64, 48, 3) and mask.shape == (64, 48) and image.dtype == mask.dtype == np.uint8
    assert not np.array_equal(train.load(0)[0], val.load(0)[0])
    labels = set()
    for i in range(8):
        labels |= set(np.unique(make_scene(0, i, (64, 64))[1]).tolist())
    assert labels == {0, 1, 2, 3, 4}


def test_synthetic_is_learnable_from_pixels() -> None:
    """A nearest-class-colour rule fitted on train scenes beats the majority class on val by far."""
    train, val = SyntheticSource("train", 24, (64, 64), 0), SyntheticSource("val", 12, (64, 64), 0)
    sums, counts = np.zeros((5, 3)), np.zeros(5)
    for i in range(len(train)):
        image, mask = train.load(i)
        for c in range(5):
            sums[c] += image[mask == c].sum(0)
            counts[c] += (mask == c).sum()
    means = sums / counts[:, None]
    rule, majority = ConfusionMatrix(5), ConfusionMatrix(5)
    for i in range(len(val)):
        image, mask = val.load(i)
        dist = ((image[..., None, :].astype(np.float64) - means) ** 2).sum(-1)
        rule.update(dist.argmin(-1), mask)
        majority.update(np.zeros_like(mask), mask)
    assert majority.summary()["miou"] < 20
    assert rule.summary()["miou"] > 3 * majority.summary()["miou"]


@pytest.mark.parametrize(("eval_size", "val_input"), [(None, (3, 64, 64)), ([48, 48], (3, 48, 48))])
def test_recipe_datasets(eval_size: list[int] | None, val_input: tuple[int, int, int]) -> None:
    recipe = recipe_from_dict(
        {
            "data": {
                "synthetic_num_train": 4,
                "synthetic_num_val": 2,
                "synthetic_size": [64, 64],
                "crop_size": [32, 40],
                "eval_size": eval_size,
            },
        }
    )
    train, val = train_dataset(recipe), eval_dataset(recipe)
    assert len(train) == 4 and len(val) == 2 and train.classes.num_classes == 5
    x, y = train[0]
    assert x.shape == (3, 32, 40) and y.shape == (32, 40)
    x, y = val[0]
    assert x.shape == val_input and y.shape == (64, 64)  # the mask keeps the image's size: scored at full resolution
