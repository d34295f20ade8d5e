"""`edgeseg info`: parameters and GMACs of a recipe's or checkpoint's model at each output stride.

Here, not in models/, because a checkpoint is read (and validated) by train.checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeseg.config import load_recipe
from edgeseg.data.dataset import open_split
from edgeseg.models.info import stride_costs
from edgeseg.sizes import parse_size
from edgeseg.train.checkpoint import checkpoint_recipe, load_checkpoint


def model_info(source: Path, input_size: str | None = None) -> list[dict[str, Any]]:
    """One row per output stride (see models.info.stride_costs) for a recipe (.yaml) or checkpoint (.pt).

    Args:
        source: a recipe or a checkpoint written by edgeseg.
        input_size: "HxW" (default: the recipe's eval size, else its crop size).
    """
    if source.suffix in (".yaml", ".yml"):
        recipe = load_recipe(source)
        num_classes = recipe.num_classes or open_split(recipe, recipe.data.val_split).classes.num_classes
        width_mult, head = recipe.model.width_mult, recipe.model.head
    else:
        ckpt = load_checkpoint(source)
        recipe = checkpoint_recipe(ckpt)
        num_classes, width_mult, head = (ckpt["arch"][k] for k in ("num_classes", "width_mult", "head"))
    size = parse_size(input_size) if input_size else tuple(recipe.data.eval_size or recipe.data.crop_size)
    return stride_costs(num_classes=num_classes, width_mult=width_mult, head=head, size=size)  # type: ignore[arg-type]
