"""Eval preprocessing in numpy, identical to training's eval transform (no torch here)."""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Bilinear resize with Pillow (the same call torchvision makes for PIL inputs)."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def preprocess(image: np.ndarray, size: tuple[int, int] | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 HxWx3 -> float32 1x3xHxW, resized and normalised."""
    x = resize_image(image, size).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
