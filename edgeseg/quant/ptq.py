"""Post-training quantization of a checkpoint (`edgeseg calibrate`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeseg.config import recipe_from_dict
from edgeseg.data.classes import ClassInfo
from edgeseg.errors import CheckpointError, ConfigError, did_you_mean
from edgeseg.fsutil import write_json
from edgeseg.quant.calibrators import METHODS
from edgeseg.quant.data import Progress, recipe_forward_loop
from edgeseg.quant.quantize import quant_convs, quant_ranges, quant_state, quantize
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


def ranges_path(out: str | Path) -> Path:
    """The JSON of ranges written next to a calibrated checkpoint: FILE.pt -> FILE.ranges.json."""
    out = Path(out)
    return out.with_name(out.stem + ".ranges.json")


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
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("quant"):
        raise CheckpointError(f"checkpoint '{checkpoint}' is already quantized; calibrate its FP32 checkpoint (e.g. fp32.pt) instead")
    recipe = recipe_from_dict(ckpt["recipe"])
    method = method or recipe.quant.calib_method
    if method not in METHODS:
        raise ConfigError(f"--method '{method}' is unknown{did_you_mean(method, METHODS)}; use one of {', '.join(METHODS)}")
    percentile = recipe.quant.percentile if percentile is None else percentile
    if not 50.0 < percentile <= 100.0:
        raise ConfigError(f"--percentile {percentile} is invalid; use a value in (50, 100], e.g. 99.99")
    loop, info = recipe_forward_loop(recipe, calib_list=calib_list, data_root=data_root, num_images=num_images, progress=progress)
    qmodel = quantize(model_from_checkpoint(ckpt), {"method": method, "percentile": percentile}, loop)
    meta = {"method": method, "calib_list": info["calib_list"], "num_images": info["num_images"], "qat": False}
    if method == "percentile":
        meta["percentile"] = percentile
    save_checkpoint(
        out,
        model=qmodel,
        recipe=recipe,
        classes=ClassInfo.from_dict(ckpt["classes"]),
        stage="ptq",
        quant=quant_state(qmodel),
        quant_meta=meta,
        source_checkpoint=str(checkpoint),
    )
    ranges = quant_ranges(qmodel)
    weights = {name: [round(float(v), 6) for v in conv.weight_amax()] for name, conv in quant_convs(qmodel)}
    write_json(ranges_path(out), {"checkpoint": str(out), **meta, "activations": ranges, "weights_per_channel": weights})
    return {
        "out": str(out),
        "ranges": str(ranges_path(out)),
        **meta,
        "too_few": info["too_few"],
        "quantizers": sum(v is not None for v in ranges.values()),
        "seconds": time.perf_counter() - start,
    }
