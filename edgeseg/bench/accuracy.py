"""Accuracy of any runner over a data split, with numpy preprocessing identical to training's eval.

Logits are resized back to the mask's size when the model's input size differs from the image's,
by bilinear interpolation with torch's align_corners=False rule (the same resize
edgeseg.train.evaluate applies before its argmax), written in numpy so no torch is needed
(edgeseg.export.io_spec.resize_bilinear; `postprocess` and `resize_bilinear` are re-exported here).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.data.sources import Source
from edgeseg.export.io_spec import IOSpec, class_map, feed, postprocess, resize_bilinear
from edgeseg.metrics import ConfusionMatrix

__all__ = ["AccuracyResult", "evaluate_runner", "postprocess", "resize_bilinear"]


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
