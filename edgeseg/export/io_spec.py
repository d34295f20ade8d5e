"""What an artifact takes and gives (meta.json "io"), and the numpy on each side of the model.

An artifact's input is a "tensor" (float32 N x 3 x H x W, resized and normalised outside the
model: edgeseg.data.preprocess) or an "image" (uint8 pixels at the input size, normalised inside
the model; N x H x W x 3 for OpenVINO, whose PrePostProcessor also moves the channels, N x 3 x H x
W elsewhere). Its output is "logits" (float32 N x C x H x W) or "labels" (the class map N x H x W
from an argmax inside the model, uint8 or int32). An artifact written before meta.json had "io"
takes a tensor and gives logits.

numpy and Pillow only (the device side): bench and its accuracy pass feed every artifact through here,
and the exporters that wrap a model (edgeseg.export.io_wrap) check it with the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.data.preprocess import preprocess, resize_image

INPUTS = ("image", "tensor")
OUTPUTS = ("labels", "logits")


@dataclass(frozen=True)
class IOSpec:
    """How an artifact is fed and read: meta.json's "io" (see the module docstring)."""

    input: str = "tensor"
    layout: str = "NCHW"
    output: str = "logits"
    labels_dtype: str | None = None  # "uint8" or "int32" when output is "labels"

    def as_meta(self) -> dict[str, Any]:
        return {"input": self.input, "layout": self.layout, "output": self.output, "labels_dtype": self.labels_dtype}

    @property
    def plain(self) -> bool:
        """Tensor in, logits out: what every artifact took and gave before "io" existed."""
        return self.input == "tensor" and self.output == "logits"


def io_of(meta: dict[str, Any]) -> IOSpec:
    """The IOSpec of an artifact's meta.json (tensor in, logits out when it has no "io")."""
    io = meta.get("io") or {}
    return IOSpec(io.get("input", "tensor"), io.get("layout", "NCHW"), io.get("output", "logits"), io.get("labels_dtype"))


def feed(image: np.ndarray, io: IOSpec, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A decoded uint8 H x W x 3 image -> the artifact's input, batch 1 (resized to `size`)."""
    if io.input == "tensor":
        return preprocess(image, size, mean, std)
    pixels = np.asarray(resize_image(image, size), dtype=np.uint8)
    return np.ascontiguousarray(pixels[None] if io.layout == "NHWC" else pixels.transpose(2, 0, 1)[None])


def model_input(x: np.ndarray) -> np.ndarray:
    """`x` as a runner passes it on: C-contiguous, uint8 pixels as they are, anything else float32."""
    return np.ascontiguousarray(x, dtype=None if np.asarray(x).dtype == np.uint8 else np.float32)


def random_input(io: IOSpec, batch: int, size: tuple[int, int]) -> np.ndarray:
    """A fixed (seeded) input of the artifact's kind, for latency: a network's time does not depend on pixel values."""
    rng = np.random.default_rng(0)
    if io.input == "tensor":
        return rng.standard_normal((batch, 3, *size), dtype=np.float32)
    shape = (batch, *size, 3) if io.layout == "NHWC" else (batch, 3, *size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _source_index(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours and weights along one axis: torch's area_pixel_compute_source_index.

    src = (dst + 0.5) * scale - 0.5 with the float32 scale in/out, clamped at 0; i0 = floor(src),
    i1 = i0 + 1 unless at the last pixel; weight of i1 = src - i0. src is rounded to float32 once
    (as torch's fused multiply-add does), computed exactly in float64 first.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0.astype(np.float32)
    return i0, i1, w1


def resize_bilinear(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize C x H x W logits to C x size[0] x size[1] (bilinear, align_corners=False)."""
    c, h, w = logits.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return logits
    y0, y1, wy = _source_index(h, out_h)
    x0, x1, wx = _source_index(w, out_w)
    wy = wy[None, :, None]
    rows = logits[:, y0, :] * (1 - wy) + logits[:, y1, :] * wy
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def postprocess(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C x h x w logits -> H x W class-index mask (resized logits, then argmax)."""
    return resize_bilinear(np.asarray(logits, dtype=np.float32), size).argmax(0)


def _nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H x W class map (a class index cannot be interpolated)."""
    h, w = labels.shape
    if (h, w) == tuple(size):
        return labels
    rows = np.minimum((np.arange(size[0]) + 0.5) * h / size[0], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size[1]) + 0.5) * w / size[1], w - 1).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]


def class_map(output: np.ndarray, io: IOSpec, size: tuple[int, int]) -> np.ndarray:
    """One image's output (C x h x w logits, or an h x w class map) -> the H x W class map at `size`.

    Logits are resized bilinearly before their argmax (as training's evaluation does); a class
    map from the model is resized by nearest neighbour. At the model's own input size the two
    give the same map."""
    if io.output == "logits":
        return postprocess(output, size)
    return _nearest(np.asarray(output).astype(np.int64, copy=False), size)


def output_problem(y: np.ndarray, io: IOSpec, batch: int, classes: int) -> str | None:
    """Why `y` is not what the artifact's io promises (shape, dtype, NaN, class range), or None."""
    if io.output == "logits":
        if y.ndim != 4 or y.shape[0] != batch or y.shape[1] != classes:
            return f"logits of shape {tuple(y.shape)}, expected ({batch}, {classes}, H, W)"
        if not np.isfinite(y).all():
            return "NaN/inf logits"
        return None
    if y.ndim != 3 or y.shape[0] != batch:
        return f"a class map of shape {tuple(y.shape)}, expected ({batch}, H, W)"
    if not np.issubdtype(y.dtype, np.integer):
        return f"a class map of dtype {y.dtype}, expected {io.labels_dtype or 'an integer type'}"
    if y.size and (int(y.min()) < 0 or int(y.max()) >= classes):
        return f"class indices {int(y.min())}..{int(y.max())}, outside 0..{classes - 1}"
    return None
