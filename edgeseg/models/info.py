"""Parameters and GMACs of a recipe's or checkpoint's model at each output stride."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from edgeseg.errors import ConfigError
from edgeseg.models import build_model


def parse_size(text: str) -> tuple[int, int]:
    """'360x480' -> (360, 480)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"input size '{text}' must look like HEIGHTxWIDTH, e.g. 360x480") from None
    if h < 32 or w < 32:
        raise ConfigError(f"input size '{text}' is too small; use at least 32x32")
    return h, w


def gmacs(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """Multiply-accumulates (x1e9) of one forward at `size` (FLOPs counted by torch / 2)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 2e9


def model_info(source: Path, input_size: str | None = None) -> list[dict[str, Any]]:
    if source.suffix in (".yaml", ".yml"):
        from edgeseg.config import load_recipe
        from edgeseg.data.dataset import open_split

        recipe = load_recipe(source)
        num_classes = recipe.num_classes or open_split(recipe, recipe.data.val_split).classes.num_classes
        arch = {"num_classes": num_classes, "width_mult": recipe.model.width_mult, "head": recipe.model.head}
    else:
        from edgeseg.config import recipe_from_dict
        from edgeseg.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(source)
        recipe = recipe_from_dict(ckpt["recipe"])
        arch = {k: ckpt["arch"][k] for k in ("num_classes", "width_mult", "head")}
    size = parse_size(input_size) if input_size else tuple(recipe.data.eval_size or recipe.data.crop_size)
    rows = []
    for os_ in (8, 16, 32):
        model = build_model(output_stride=os_, **arch)
        rows.append(
            {
                "head": arch["head"],
                "output_stride": os_,
                "input": f"{size[0]}x{size[1]}",
                "params": sum(p.numel() for p in model.parameters()),
                "gmacs": gmacs(model, size),  # type: ignore[arg-type]
            }
        )
    return rows


def parse_strides(text: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32], each checked."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"output strides '{text}' must be comma-separated numbers, e.g. 8,16,32") from None
    bad = [v for v in values if v not in (8, 16, 32)]
    if bad or not values:
        raise ConfigError(f"output stride {bad[0] if bad else text!r} is invalid; use 8, 16 and/or 32")
    return values
