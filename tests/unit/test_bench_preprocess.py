"""bench's numpy path against training's torch path: the input tensor and the logit resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from edgeseg.bench.accuracy import postprocess, resize_bilinear
from edgeseg.data.dataset import EvalTransform
from edgeseg.data.preprocess import preprocess
from edgeseg.data.synthetic import make_scene


@pytest.mark.parametrize("size", [None, (64, 64), (48, 80), (100, 120), (72, 88)], ids=str)
@pytest.mark.parametrize("kind", ["scene", "noise"])
def test_numpy_preprocess_equals_eval_transform(size: tuple[int, int] | None, kind: str) -> None:
    """With and without resize (down, up, aspect change, same size): identical input tensors."""
    if kind == "scene":
        image, mask = make_scene(0, 3, (72, 88))
    else:
        image = np.random.default_rng(1).integers(0, 256, (72, 88, 3), dtype=np.uint8)
        mask = np.zeros((72, 88), np.uint8)
    expected, _ = EvalTransform(size)(image, mask)
    got = preprocess(image, size)
    assert got.shape == (1, *expected.shape) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-6, rtol=0)


def test_resize_by_hand() -> None:
    # width 2 -> 4, align_corners=False: src = (dst + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the edge)
    logits = np.array([[[0.0, 10.0]]], np.float32)
    np.testing.assert_allclose(resize_bilinear(logits, (1, 4)), [[[0.0, 2.5, 7.5, 10.0]]], atol=1e-6)
    # height 4 -> 2: src = (dst + 0.5) * 2 - 0.5 = 0.5, 2.5
    col = np.array([[[0.0], [4.0], [8.0], [12.0]]], np.float32)
    np.testing.assert_allclose(resize_bilinear(col, (2, 1)), [[[2.0], [10.0]]], atol=1e-6)


@pytest.mark.parametrize(
    ("src", "dst"), [((16, 16), (64, 64)), ((64, 64), (72, 88)), ((45, 60), (360, 480)), ((90, 120), (33, 47)), ((8, 8), (8, 8))]
)
def test_resize_equals_torch_bilinear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    logits = np.random.default_rng(0).standard_normal((5, *src)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(logits)[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    got = resize_bilinear(logits, dst)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # masks: argmax of the resized logits, as edgeseg.train.evaluate does. The two resizes differ
    # by float rounding (< 1e-5), so the masks must agree wherever the top two logits are further apart.
    mask = postprocess(logits, dst)
    assert np.array_equal(mask, got.argmax(0))
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4
    assert np.array_equal(mask[clear], expected.argmax(0)[clear])
