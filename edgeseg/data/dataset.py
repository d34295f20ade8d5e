"""Torch datasets and joint image+mask transforms (torchvision.transforms.v2)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from edgeseg.config import Recipe
from edgeseg.data.classes import IGNORE_INDEX
from edgeseg.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.data.sources import ConcatSource, Source, open_source, synthetic_params

# Pad images with the mean pixel, so padding is zero after normalisation.
_MEAN_PIXEL = [round(m * 255) for m in IMAGENET_MEAN]


class TrainTransform:
    """Random scale, crop with ignore padding, flip and colour jitter, applied to image and mask."""

    def __init__(self, crop: tuple[int, int], scale_range: tuple[float, float], hflip: bool, jitter: float) -> None:
        self.crop = crop
        self.scale_range = scale_range
        fill = {tv_tensors.Image: _MEAN_PIXEL, tv_tensors.Mask: IGNORE_INDEX}
        steps: list[v2.Transform] = [v2.RandomCrop(crop, pad_if_needed=True, fill=fill)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if jitter > 0:
            steps.append(v2.ColorJitter(jitter, jitter, jitter))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(mask)[None])
        scale = random.uniform(*self.scale_range)
        if scale != 1.0:
            size = [max(8, round(img.shape[-2] * scale)), max(8, round(img.shape[-1] * scale))]
            img = TF.resize(img, size, antialias=True)
            msk = TF.resize(msk, size, interpolation=v2.InterpolationMode.NEAREST_EXACT)
        img, msk = self.pipeline(img, msk)
        return img.as_subclass(torch.Tensor), msk[0].long().as_subclass(torch.Tensor)


class EvalTransform:
    """Deterministic: optional resize of the image (Pillow bilinear), normalise; mask untouched."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        steps: list[v2.Transform] = []
        if size is not None:
            steps.append(v2.Resize(size))
        steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        return self.pipeline(Image.fromarray(image)), torch.from_numpy(mask).long()


class SegDataset(Dataset):
    """A Source with a transform applied."""

    def __init__(self, source: Source, transform) -> None:  # noqa: ANN001
        self.source = source
        self.transform = transform
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source.load(i)
        return self.transform(image, mask)


def open_split(recipe: Recipe, split: str, root: str | None = None, fmt: str | None = None) -> Source:
    """Open a split of the recipe's data set (root/format may be overridden)."""
    return open_source(fmt or recipe.data.format, root or recipe.data.root, split, synthetic_params(recipe))


def train_dataset(recipe: Recipe) -> SegDataset:
    d = recipe.data
    tf = TrainTransform(tuple(d.crop_size), tuple(d.scale_range), d.hflip, d.color_jitter)  # type: ignore[arg-type]
    splits = train_splits(recipe)
    parts = [open_split(recipe, s) for s in splits]
    return SegDataset(parts[0] if len(parts) == 1 else ConcatSource(parts), tf)


def train_splits(recipe: Recipe) -> list[str]:
    """The splits a recipe trains on: data.train_splits, else [data.train_split]."""
    return list(recipe.data.train_splits or [recipe.data.train_split])


def val_is_held_out(recipe: Recipe) -> bool:
    """False when the recipe trains on its own validation split (its val score is then not honest)."""
    return recipe.data.val_split not in train_splits(recipe)


def eval_dataset(recipe: Recipe, split: str | None = None, root: str | None = None, fmt: str | None = None) -> SegDataset:
    d = recipe.data
    size = tuple(d.eval_size) if d.eval_size else None
    return SegDataset(open_split(recipe, split or d.val_split, root, fmt), EvalTransform(size))  # type: ignore[arg-type]
