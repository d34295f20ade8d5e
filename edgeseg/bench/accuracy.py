"""Accuracy of any runner over a data split, with numpy preprocessing identical to training's eval.

Logits are resized back to the mask's size when the model's input size differs from the image's,
by bilinear interpolation with torch's align_corners=False rule (the same resize
edgeseg.train.evaluate applies before its argmax), written in numpy so no torch is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.data.sources import Source
from edgeseg.export.io_spec import IOSpec, class_map, feed
from edgeseg.metrics import ConfusionMatrix


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


@dataclass
class AccuracyResult:
    summary: dict[str, Any]  # ConfusionMatrix.summary(): miou, pixel_acc, per_class_iou, pixels
    num_images: int
    preprocess_ms: float  # mean per image
    postprocess_ms: float  # mean per image


def evaluate_runner(
    run: Callable[[np.ndarray], np.ndarray],
    source: Source,
    *,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    names: Sequence[str],
    ignore_index: int = 255,
    batch: int = 1,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    io: IOSpec | None = None,
) -> AccuracyResult:
    """mIoU, pixel accuracy and per-class IoU of `run` over `source`.

    Images are fed in batches of `batch`; the last batch is padded by repeating its last image
    (so static-batch models work) and the padded outputs are dropped. `io` says what the model
    takes and gives (edgeseg.export.io_spec; default: a normalised tensor in, logits out); pre- and
    post-processing time whatever runs outside the model for it.
    """
    io = io or IOSpec()
    cm = ConfusionMatrix(len(names), ignore_index)
    n = len(source) if limit is None else min(limit, len(source))
    pre_ns = post_ns = 0
    for start in range(0, n, batch):
        idx = list(range(start, min(start + batch, n)))
        masks, inputs = [], []
        for i in idx:
            image, mask = source.load(i)
            t0 = time.perf_counter_ns()
            inputs.append(feed(image, io, input_size, mean, std))
            pre_ns += time.perf_counter_ns() - t0
            masks.append(mask)
        x = np.concatenate(inputs + [inputs[-1]] * (batch - len(inputs)), axis=0)
        out = run(x)
        for k, mask in enumerate(masks):
            t0 = time.perf_counter_ns()
            pred = class_map(out[k], io, mask.shape[:2])
            post_ns += time.perf_counter_ns() - t0
            cm.update(pred, mask)
        if progress:
            progress(idx[-1] + 1, n)
    return AccuracyResult(cm.summary(list(names)), n, pre_ns / 1e6 / max(n, 1), post_ns / 1e6 / max(n, 1))
