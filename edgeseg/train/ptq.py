"""`edgeseg calibrate`: post-training quantization of an FP32 checkpoint into a PTQ checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from edgeseg.config import Recipe
from edgeseg.constants import check_calib_method, check_percentile
from edgeseg.data.classes import ClassInfo
from edgeseg.errors import CheckpointError
from edgeseg.quant import Progress, calibrate_recipe, quant_state, ranges_path, write_ranges
from edgeseg.train.checkpoint import checkpoint_recipe, load_checkpoint, model_from_checkpoint, save_checkpoint


def calibrate_checkpoint(
    checkpoint: str | Path,
    calib_list: str | Path | None,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    method: str | None = None,
    percentile: float | None = None,
    num_images: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Calibrate an FP32 checkpoint into a PTQ checkpoint `out` plus `ranges_path(out)`.

    Args:
        checkpoint: an FP32 checkpoint written by `edgeseg train`.
        calib_list: image list (one path a line, relative to `data_root`); None uses the
            recipe's quant.calib_list, else its train split.
        out: the calibrated checkpoint to write (atomically).
        data_root: root of the list's paths (default: the recipe's data.root).
        method: max, percentile, entropy or mse (default: the recipe's quant.calib_method).
        percentile: for the percentile method (default: the recipe's, 99.99).
        num_images: use only the first N images of the list.
        progress: called with (done, total) after each image.

    Returns:
        A summary: out, ranges, method, num_images, too_few, quantizers, seconds.
    """
    start = time.perf_counter()
    ckpt, recipe, method, percentile = _checked_inputs(checkpoint, method, percentile)
    qmodel, meta, info = calibrate_recipe(
        model_from_checkpoint(ckpt),
        recipe,
        method=method,
        percentile=percentile,
        calib_list=calib_list,
        data_root=data_root,
        num_images=num_images,
        progress=progress,
    )
    ranges = _save(out, qmodel, meta, recipe, ckpt, source=checkpoint)
    return {
        "out": str(out),
        "ranges": str(ranges_path(out)),
        **meta,
        "too_few": info["too_few"],
        "quantizers": sum(v is not None for v in ranges.values()),
        "seconds": time.perf_counter() - start,
    }


def _checked_inputs(checkpoint: str | Path, method: str | None, percentile: float | None) -> tuple[dict[str, Any], Recipe, str, float]:
    """The FP32 checkpoint, its recipe, and the method and percentile (default: the recipe's), all
    checked before any work starts; a quantized checkpoint is refused."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("quant"):
        raise CheckpointError(f"checkpoint '{checkpoint}' is already quantized; calibrate its FP32 checkpoint (e.g. fp32.pt) instead")
    recipe = checkpoint_recipe(ckpt)
    method = check_calib_method(method or recipe.quant.calib_method, "--method")
    percentile = check_percentile(recipe.quant.percentile if percentile is None else percentile, "--percentile")
    return ckpt, recipe, method, percentile


def _save(
    out: str | Path, qmodel: nn.Module, meta: dict[str, Any], recipe: Recipe, ckpt: dict[str, Any], *, source: str | Path
) -> dict[str, float | None]:
    """Write the PTQ checkpoint `out` and its ranges file; return the ranges per quantizer."""
    save_checkpoint(
        out,
        model=qmodel,
        recipe=recipe,
        classes=ClassInfo.from_dict(ckpt["classes"]),
        stage="ptq",
        quant=quant_state(qmodel),
        quant_meta=meta,
        source_checkpoint=str(source),
    )
    return write_ranges(out, qmodel, meta)
