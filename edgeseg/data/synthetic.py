"""Procedural scenes with known masks: the built-in default data set (numpy + Pillow only).

Each scene has a textured background and a few shapes (disc, box, triangle, stripe), each class
with its own colour family and texture, so the task is learnable but not trivial: colours
overlap between classes and shapes occlude each other. A scene depends only on (seed, index).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from edgeseg.data.classes import SYNTHETIC

_BASE = np.array(SYNTHETIC.colors, np.float32)


def make_scene(seed: int, index: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint8 HxWx3, mask uint8 HxW) for scene `index` of data set `seed`."""
    rng = np.random.default_rng([seed, index])
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    grad = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None]
    bg = rng.uniform(40, 160, 3) + 50 * grad + rng.normal(0, 12, (h, w, 3))
    image = bg.astype(np.float32)
    mask_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask_img)
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(1, 5))
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        r = rng.uniform(0.08, 0.25) * min(h, w)
        if cls == 1:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=cls)
        elif cls == 2:
            draw.rectangle([cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r], fill=cls)
        elif cls == 3:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=cls)
        else:
            draw.rectangle([0, cy - 0.25 * r, w, cy + 0.25 * r], fill=cls)
    mask = np.asarray(mask_img).copy()
    for cls in range(1, 5):
        sel = mask == cls
        if not sel.any():
            continue
        color = _BASE[cls] + rng.normal(0, 25, 3)
        freq = 0.3 + 0.15 * cls
        texture = 20 * np.sin(freq * (xx + yy * (cls % 2)))[..., None]
        image[sel] = (color + texture + rng.normal(0, 10, (h, w, 3)))[sel]
    return np.clip(image, 0, 255).astype(np.uint8), mask


class SyntheticSource:
    """A split of synthetic scenes; train and val use disjoint index ranges of one seed."""

    classes = SYNTHETIC

    def __init__(self, split: str, num: int, size: tuple[int, int], seed: int = 0) -> None:
        self.split = split
        self.size = tuple(size)
        self.seed = seed
        self.offset = 0 if split == "train" else 1_000_000
        self.num = num

    def __len__(self) -> int:
        return self.num

    def name(self, i: int) -> str:
        return f"synthetic_{self.split}_{i:05d}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return make_scene(self.seed, self.offset + i, self.size)  # type: ignore[arg-type]
