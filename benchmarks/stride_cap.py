"""What a perfect head at output stride s could score: per-class IoU caps from the labels alone.

A segmentation head predicts on a grid s times coarser than the image and its logits are
bilinearly upsampled to full size. Its best possible prediction is the true class fractions of
each s x s cell; this upsamples those fractions as the model upsamples its logits (bilinear, to the
input size), takes the argmax and scores it against the labels. Classes thinner than about s/2
pixels cannot win a cell, so their cap falls with s: on CamVid at 360x480, Pole is about 62 IoU at
stride 4 (DeepLabV3+'s decoder), 17 at stride 8 and under 1 at stride 16 (a plain ASPP head), so
the decoder's stride-4 features are where a pole can be found at all. No model, no training: the
labels of one split, read as `edgeseg eval` reads them.

    python benchmarks/stride_cap.py                                  # CamVid val, strides 2-32
    python benchmarks/stride_cap.py recipes/voc_mnv2_os16.yaml --strides 4 16
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from edgeseg.config import load_recipe
from edgeseg.data.classes import IGNORE_INDEX
from edgeseg.metrics import ConfusionMatrix

REPO = Path(__file__).resolve().parents[1]


def stride_caps(masks: Iterable[np.ndarray], num_classes: int, strides: list[int]) -> dict[int, list[float]]:
    """Per-class IoU (%) of the best stride-s prediction, for each stride, over all masks.

    Args:
        masks: label maps (H, W) of class ids, IGNORE_INDEX for unlabelled pixels.
        num_classes: number of classes.
        strides: output strides (1 scores the labels against themselves).
    """
    matrices = {s: ConfusionMatrix(num_classes, IGNORE_INDEX) for s in strides}
    for mask in masks:
        labels = torch.from_numpy(np.asarray(mask, dtype=np.int64))
        h, w = labels.shape
        valid = labels != IGNORE_INDEX
        onehot = F.one_hot(labels.clamp(max=num_classes - 1), num_classes).permute(2, 0, 1).float() * valid
        for s in strides:
            if s == 1:
                pred = labels.clamp(max=num_classes - 1)
            else:
                padded = F.pad(onehot, (0, -w % s, 0, -h % s))  # as the model's ceil(H / s) grid
                cells = F.avg_pool2d(padded[None], s, s)
                pred = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
            matrices[s].update(pred, labels)
    return {s: [float(v) * 100.0 for v in m.iou()] for s, m in matrices.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", type=Path, default=REPO / "recipes" / "camvid_mnv2_os16.yaml")
    parser.add_argument("--split", help="default: the recipe's data.val_split")
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--json", type=Path, help="also write the caps here")
    args = parser.parse_args()
    if any(s < 1 or s > 64 for s in args.strides):
        parser.error(f"--strides {args.strides}: use strides from 1 to 64")
    from edgeseg.data.dataset import open_split

    recipe = load_recipe(args.recipe)
    from edgeseg.fsutil import spare_inputs

    spare_inputs({"--json": args.json}, [args.recipe, Path(recipe.data.root)])
    split = args.split or recipe.data.val_split
    source = open_split(recipe, split)
    names = source.classes.names
    caps = stride_caps((source.load(i)[1] for i in range(len(source))), len(names), args.strides)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"IoU caps of a perfect head at each output stride: {recipe.data.format} {split}, {len(source)} label maps")
    for col in ("stride", "mIoU", *names):
        table.add_column(col, justify="right")
    for s, ious in caps.items():
        table.add_row(str(s), f"{np.nanmean(ious):.1f}", *(f"{v:.1f}" for v in ious))
    Console(width=200).print(table)
    if args.json:
        from edgeseg.fsutil import write_json

        write_json(args.json, {"recipe": str(args.recipe), "split": split, "images": len(source), "classes": list(names),
                               "caps": {str(s): ious for s, ious in caps.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
