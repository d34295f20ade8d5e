"""Post-training quantization of a float model with a recipe's calibration, and its ranges file.

Checkpoints are read and written by the caller, in the train package (its ptq module for
`edgeseg calibrate`, its qat module for the start of QAT): quant knows models and data only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeseg.config import Recipe
from edgeseg.fsutil import write_json
from edgeseg.quant.data import Progress, recipe_forward_loop
from edgeseg.quant.quantize import quant_convs, quant_ranges, quantize

log = logging.getLogger(__name__)


def ranges_path(out: str | Path) -> Path:
    """The JSON of ranges written next to a calibrated checkpoint: FILE.pt -> FILE.ranges.json."""
    out = Path(out)
    return out.with_name(out.stem + ".ranges.json")


def calibrate_recipe(
    model: nn.Module,
    recipe: Recipe,
    *,
    method: str | None = None,
    percentile: float | None = None,
    calib_list: str | Path | None = None,
    data_root: str | Path | None = None,
    num_images: int | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Quantize a float model and calibrate it on a recipe's calibration images.

    Args:
        model: the float model (left unchanged).
        recipe: its recipe: calibration list, data root, image size and quant settings.
        method: max, percentile, entropy or mse (default: the recipe's quant.calib_method);
            validated by the caller.
        percentile: for the percentile method (default: the recipe's quant.percentile).
        calib_list, data_root, num_images, device, progress: see recipe_forward_loop.

    Returns:
        (quantized model, quant_meta, info): quant_meta = {method, calib_list, num_images, qat:
        False, percentile (percentile method only)}, as checkpoints store it; info is
        recipe_forward_loop's (with too_few).
    """
    method = method or recipe.quant.calib_method
    percentile = recipe.quant.percentile if percentile is None else percentile
    loop, info = recipe_forward_loop(
        recipe, calib_list=calib_list, data_root=data_root, num_images=num_images, device=device, progress=progress
    )
    log.info("calibrating %s on %d images (%s)", method, info["num_images"], info["calib_list"])
    qmodel = quantize(model, {"method": method, "percentile": percentile}, loop)
    meta: dict[str, Any] = {"method": method, "calib_list": info["calib_list"], "num_images": info["num_images"], "qat": False}
    if method == "percentile":
        meta["percentile"] = percentile
    return qmodel, meta, info


def write_ranges(checkpoint: str | Path, qmodel: nn.Module, meta: dict[str, Any]) -> dict[str, float | None]:
    """Write ranges_path(checkpoint): the calibrated model's activation and per-channel weight ranges.

    Returns:
        The activation ranges ({quantizer name: amax}, None where it stays float).
    """
    ranges = quant_ranges(qmodel)
    weights = {name: [round(float(v), 6) for v in conv.weight_amax()] for name, conv in quant_convs(qmodel)}
    write_json(ranges_path(checkpoint), {"checkpoint": str(checkpoint), **meta, "activations": ranges, "weights_per_channel": weights})
    return ranges
