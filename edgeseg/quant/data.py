"""Calibration forward loops: images through the eval preprocessing into the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeseg.config import Recipe
from edgeseg.data.calib import calibration_images
from edgeseg.data.io import read_image
from edgeseg.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess

Progress = Callable[[int, int], None]
ForwardLoop = Callable[[nn.Module], None]


def array_loop(
    load: Callable[[int], np.ndarray],
    num: int,
    size: tuple[int, int] | None = None,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> ForwardLoop:
    """A forward loop over `num` uint8 HxWx3 images, `load(i)` giving image i (batch 1).

    Each image goes through the same numpy preprocessing as evaluation and bench (resize to
    `size` when given, normalise), so the ranges are those of deployment inputs.
    """

    @torch.no_grad()
    def loop(model: nn.Module) -> None:
        for i in range(num):
            x = preprocess(load(i), size, tuple(mean), tuple(std))
            model(torch.from_numpy(x).to(device))
            if progress:
                progress(i + 1, num)

    return loop


def file_loop(paths: Sequence[Path], size: tuple[int, int] | None = None, **kwargs: Any) -> ForwardLoop:
    """A forward loop over image files (see array_loop for the options)."""
    return array_loop(lambda i: read_image(paths[i]), len(paths), size, **kwargs)


def recipe_forward_loop(
    recipe: Recipe,
    *,
    calib_list: str | Path | None = None,
    data_root: str | Path | None = None,
    num_images: int | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> tuple[ForwardLoop, dict[str, Any]]:
    """The calibration loop of a recipe and what it uses.

    With a calibration list (the argument, else recipe.quant.calib_list) its images are used,
    relative to `data_root` (else recipe.data.root); `num_images` limits them (default: all of
    an explicit list, recipe.quant.calib_num_images of the recipe's). Without a list,
    `num_images` (default recipe.quant.calib_num_images) images spread evenly over the train
    split are used. Images are resized to recipe.data.eval_size when set.

    Returns:
        (forward_loop, info) with info = {"calib_list", "num_images", "too_few"}.
    """
    size = tuple(recipe.data.eval_size) if recipe.data.eval_size else None
    load, n, info = calibration_images(recipe, calib_list=calib_list, data_root=data_root, num_images=num_images)
    return array_loop(load, n, size, device=device, progress=progress), info  # type: ignore[arg-type]
