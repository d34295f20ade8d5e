"""Data set formats: camvid, folder, voc, cityscapes and synthetic (numpy + Pillow only).

A source lists (image, mask) pairs of one split and loads them as uint8 arrays with the mask
already mapped to train ids (255 = ignore). `open_source` is the one entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeseg.data import classes as C
from edgeseg.data.io import IMAGE_EXTENSIONS, identity_lut, read_image, read_mask
from edgeseg.data.synthetic import SyntheticSource
from edgeseg.errors import DataError, did_you_mean

FORMATS = ("camvid", "folder", "voc", "cityscapes", "synthetic")


class Source(Protocol):
    classes: C.ClassInfo

    def __len__(self) -> int: ...
    def name(self, i: int) -> str: ...
    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


class FileSource:
    """Pairs of image and mask files with a raw-value -> train-id table."""

    def __init__(self, pairs: list[tuple[Path, Path]], classes: C.ClassInfo, lut: np.ndarray, valid: np.ndarray, where: str) -> None:
        if not pairs:
            raise DataError(f"no image/mask pairs found for {where}; check the data root, format and split")
        self.pairs = pairs
        self.classes = classes
        self.lut, self.valid = lut, valid

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return self.pairs[i][0].stem

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[i]
        image = read_image(image_path)
        return image, read_mask(mask_path, self.lut, self.valid, image.shape[:2])


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder '{path}' does not exist; check data.root and the split name")
    return path


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def _match(images: dict[str, Path], masks: dict[str, Path], where: str) -> list[tuple[Path, Path]]:
    missing = [s for s in images if s not in masks]
    if missing:
        raise DataError(f"image '{images[missing[0]]}' has no mask with stem '{missing[0]}' in {where}; add it or remove the image")
    return [(images[s], masks[s]) for s in sorted(images)]


def camvid(root: Path, split: str) -> FileSource:
    """SegNet layout: train/ trainannot/ val/ valannot/ test/ testannot/, void 11 -> ignore."""
    images = _images(_need_dir(root / split, "CamVid image"))
    masks = _images(_need_dir(root / f"{split}annot", "CamVid mask"))
    lut, valid = identity_lut(11, ignore_values=(11, 255))
    lut[11] = 255
    return FileSource(_match(images, masks, str(root / f"{split}annot")), C.CAMVID, lut, valid, f"CamVid split '{split}' in {root}")


def folder(root: Path, split: str) -> FileSource:
    """images/ + masks/ (+ optional {split}.txt of stems, + optional classes.txt of names)."""
    images = _images(_need_dir(root / "images", "images"))
    masks = _images(_need_dir(root / "masks", "masks"))
    split_file = root / f"{split}.txt"
    if split_file.is_file():
        stems = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not stems:
            raise DataError(f"split list '{split_file}' is empty; list one image stem a line, or delete it to use all images")
        unknown = [s for s in stems if s not in images]
        if unknown:
            raise DataError(f"'{split_file}' names '{unknown[0]}', which is not in {root / 'images'}; fix the list")
        images = {s: images[s] for s in stems}
    names_file = root / "classes.txt"
    if not names_file.is_file():
        raise DataError(f"'{names_file}' is missing; the folder format needs one class name a line")
    names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
    lut, valid = identity_lut(len(names))
    return FileSource(_match(images, masks, str(root / "masks")), C.generic(len(names), names), lut, valid, f"split '{split}' in {root}")


def voc(root: Path, split: str) -> FileSource:
    """VOCdevkit/VOC2012 (or its parent): palette PNG masks, ImageSets/Segmentation lists.

    Uses SegmentationClassAug (the 10,582-image augmented set) when present and split is train_aug.
    """
    base = root / "VOC2012" if (root / "VOC2012").is_dir() else root
    base = base / "VOCdevkit" / "VOC2012" if (base / "VOCdevkit").is_dir() else base
    mask_dir = base / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC split list '{list_file}' does not exist; use train, val or train_aug")
    _need_dir(mask_dir, "VOC mask")
    stems = [s.strip() for s in list_file.read_text().splitlines() if s.strip()]
    pairs = [(base / "JPEGImages" / f"{s}.jpg", mask_dir / f"{s}.png") for s in stems]
    lut, valid = identity_lut(21)
    return FileSource(pairs, C.VOC, lut, valid, f"VOC split '{split}' in {base}")


def cityscapes(root: Path, split: str) -> FileSource:
    """leftImg8bit/{split}/city/*_leftImg8bit.png + gtFine/{split}/city/*_gtFine_labelIds.png."""
    img_root = _need_dir(root / "leftImg8bit" / split, "Cityscapes image")
    gt_root = _need_dir(root / "gtFine" / split, "Cityscapes gtFine")
    pairs = []
    for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
        stem = img.name.replace("_leftImg8bit.png", "")
        pairs.append((img, gt_root / img.parent.name / f"{stem}_gtFine_labelIds.png"))
    lut = np.full(256, 255, np.uint8)
    valid = np.zeros(256, bool)
    valid[:34] = True
    valid[255] = True
    for raw, train_id in C.CITYSCAPES_ID_TO_TRAIN.items():
        lut[raw] = train_id
    return FileSource(pairs, C.CITYSCAPES, lut, valid, f"Cityscapes split '{split}' in {root}")


class ConcatSource:
    """Several splits of one data set read as one (e.g. train + val for a final model)."""

    def __init__(self, parts: list[Source]) -> None:
        self.parts = parts
        self.classes = parts[0].classes
        for part in parts[1:]:
            if part.classes.names != self.classes.names:
                raise DataError("the splits in data.train_splits have different classes; use splits of one data set")
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int) -> tuple[Source, int]:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k], i - int(self.offsets[k])

    def name(self, i: int) -> str:
        part, j = self._locate(i)
        return part.name(j)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        part, j = self._locate(i)
        return part.load(j)


def synthetic_params(recipe: Any) -> dict[str, Any]:
    """The parameters of a recipe's synthetic data set (its data section's synthetic_* keys)."""
    d = recipe.data
    return {"num_train": d.synthetic_num_train, "num_val": d.synthetic_num_val, "size": list(d.synthetic_size), "seed": d.synthetic_seed}


def open_source(fmt: str, root: str | Path | None, split: str, synthetic: dict | None = None) -> Source:
    """Open one split of a data set.

    Args:
        fmt: one of FORMATS.
        root: data root (ignored for synthetic).
        split: split name (train, val, ...).
        synthetic: for fmt 'synthetic': num_train, num_val, size, seed.
    """
    if fmt == "synthetic":
        s = synthetic or {}
        num = s.get("num_train", 64) if split == "train" else s.get("num_val", 16)
        return SyntheticSource(split, int(num), tuple(s.get("size", (128, 128))), int(s.get("seed", 0)))  # type: ignore[arg-type]
    readers = {"camvid": camvid, "folder": folder, "voc": voc, "cityscapes": cityscapes}
    if fmt not in readers:
        raise DataError(f"unknown data format '{fmt}'{did_you_mean(fmt, FORMATS)}; use one of {', '.join(FORMATS)}")
    if root is None:
        raise DataError(f"data format '{fmt}' needs a data root: set data.root or pass --data")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root '{root}' does not exist; pass the folder that holds the '{fmt}' data")
    return readers[fmt](root, split)
