"""Predict masks for image files with a checkpoint: a coloured mask PNG and an overlay per image.

The mask is a palette PNG: its pixel values are the class indices and its palette holds the class
colours, so it shows in colour and still reads back as indices. The overlay blends the class
colours into the image. Both are written atomically.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from edgeseg.data.classes import ClassInfo
from edgeseg.data.io import read_image
from edgeseg.data.preprocess import preprocess
from edgeseg.errors import DataError
from edgeseg.fsutil import check_writable, write_bytes
from edgeseg.train.checkpoint import checkpoint_recipe, load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_image(mask: np.ndarray, classes: ClassInfo) -> Image.Image:
    """Class-index mask (HxW uint8) -> palette ('P') image coloured with the class colours."""
    img = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette makes it P
    palette = np.zeros((256, 3), np.uint8)
    palette[: classes.num_classes] = np.asarray(classes.colors, np.uint8)
    img.putpalette(palette.reshape(-1).tolist())
    return img


def overlay(image: np.ndarray, mask: np.ndarray, classes: ClassInfo, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the class colours of `mask` into `image` (both HxW); returns uint8 HxWx3."""
    colors = np.asarray(classes.colors, np.float32)[np.clip(mask, 0, classes.num_classes - 1)]
    return np.round((1 - alpha) * image.astype(np.float32) + alpha * colors).astype(np.uint8)


def _output_names(images: list[Path]) -> list[str]:
    """File stems for the outputs; images that share a stem get a numeric suffix."""
    seen: dict[str, int] = {}
    names = []
    for path in images:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return names


@torch.no_grad()
def predict_mask(
    model: torch.nn.Module, image: np.ndarray, size: tuple[int, int] | None, mean: list[float], std: list[float]
) -> np.ndarray:
    """Class-index mask (HxW uint8, the image's size) of one RGB uint8 image."""
    x = torch.from_numpy(preprocess(image, size, mean, std))
    logits = model(x)
    if logits.shape[-2:] != image.shape[:2]:
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).numpy()


def predict_files(ckpt: str | Path, images: list[Path], out: str | Path, output_stride: int | None = None) -> list[Path]:
    """Write `<stem>_mask.png` (palette PNG of class indices) and `<stem>_overlay.png` per image.

    Images are preprocessed as in evaluation: resized to the recipe's eval size when it has one,
    normalised with the checkpoint's mean and std; the mask is scored at the image's own size.

    Args:
        ckpt: checkpoint written by `edgeseg train`.
        images: image files (any format Pillow reads).
        out: output folder (created).
        output_stride: run the model at this output stride (8, 16, 32); default: as trained.

    Returns:
        The written files, mask then overlay for each image.

    Raises:
        DataError: an image is missing or cannot be decoded (nothing is written, `out` is not
            created).
        CheckpointError: the checkpoint is unusable or the output stride invalid (nothing is
            written).
    """
    images = [Path(p) for p in images]
    if not images:
        raise DataError("no images given; pass one or more image files after the checkpoint")
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise DataError(f"image '{missing[0]}' does not exist; check the path")
    for path in images:  # every image decodes before anything is written: a bad one writes nothing
        read_image(path)
    c = load_checkpoint(ckpt)
    model = model_from_checkpoint(c, output_stride).eval()
    classes = ClassInfo.from_dict(c["classes"])
    recipe = checkpoint_recipe(c)
    size = tuple(recipe.data.eval_size) if recipe.data.eval_size else None
    norm = c.get("normalization", {})
    mean, std = norm.get("mean", [0.485, 0.456, 0.406]), norm.get("std", [0.229, 0.224, 0.225])
    folder = check_writable(out)
    written: list[Path] = []
    for path, name in zip(images, _output_names(images)):
        image = read_image(path)
        mask = predict_mask(model, image, size, mean, std)  # type: ignore[arg-type]
        mask_path, overlay_path = folder / f"{name}_mask.png", folder / f"{name}_overlay.png"
        write_bytes(mask_path, _png_bytes(mask_image(mask, classes)))
        write_bytes(overlay_path, _png_bytes(Image.fromarray(overlay(image, mask, classes))))
        written += [mask_path, overlay_path]
        log.info("%s -> %s", path, mask_path)
    return written
