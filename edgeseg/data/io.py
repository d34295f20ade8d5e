"""Reading images and masks with clear errors (numpy + Pillow only, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeseg.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as uint8 HxWx3; unreadable, truncated or non-image files raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image '{path}' does not exist; check the data root and split")
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"image '{path}' cannot be decoded ({type(exc).__name__}: {exc}); it is corrupt, truncated "
            "or not an image: replace or remove it"
        ) from None


def read_mask(path: str | Path, lut: np.ndarray, valid: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a class-index mask and map raw values to train ids.

    Args:
        path: a single-channel (L or P mode) PNG of class indices.
        lut: 256-entry uint8 table from raw value to train id (255 = ignore).
        valid: 256-entry bool table of the raw values allowed in this format.
        size: (height, width) the mask must have (that of its image).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask '{path}' does not exist; every image needs a mask with the same file stem")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA"):
                raise DataError(
                    f"mask '{path}' is a colour ({mode}) image; masks must hold class indices in one "
                    "channel (mode L or P): convert the colours to indices"
                )
            arr = _indices(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"mask '{path}' cannot be decoded ({type(exc).__name__}); replace it") from None
    if size is not None and arr.shape[:2] != tuple(size):
        raise DataError(
            f"mask '{path}' is {arr.shape[1]}x{arr.shape[0]} but its image is {size[1]}x{size[0]}; masks must have their image's size"
        )
    bad = ~valid[arr]
    if bad.any():
        value = int(arr[bad][0])
        allowed = np.flatnonzero(valid)
        raise DataError(
            f"mask '{path}' has value {value}, outside the classes of this format "
            f"(allowed: {_ranges(allowed)}); fix the mask or choose the right data.format"
        )
    return lut[arr]


def _indices(img: Image.Image, path: Path) -> np.ndarray:
    """Class indices of a one-channel mask as uint8; 16/32-bit masks must hold values <= 255."""
    if img.mode in ("L", "P"):
        return np.asarray(img)
    if img.mode.startswith("I") or img.mode in ("F", "1"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.array_equal(arr, np.round(arr))):
            raise DataError(
                f"mask '{path}' ({img.mode}) has value {arr.max() if arr.max() > 255 else arr.min()}, not a class "
                "index 0-255; save masks as 8-bit PNGs of class indices"
            )
        return arr.astype(np.uint8)
    return np.asarray(img.convert("L"))


def _ranges(values: np.ndarray) -> str:
    out, start = [], None
    prev = None
    for v in values.tolist() + [None]:
        if start is None:
            start = prev = v
        elif v is not None and v == prev + 1:
            prev = v
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = v
    return ", ".join(out)


def identity_lut(num_classes: int, ignore_values: tuple[int, ...] = (255,)) -> tuple[np.ndarray, np.ndarray]:
    """LUT for masks that already hold train ids 0..n-1 plus ignore values (mapped to 255)."""
    lut = np.full(256, 255, np.uint8)
    valid = np.zeros(256, bool)
    lut[:num_classes] = np.arange(num_classes)
    valid[:num_classes] = True
    for v in ignore_values:
        valid[v] = True
    return lut, valid
