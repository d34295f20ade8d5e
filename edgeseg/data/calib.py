"""Calibration image lists (numpy/Pillow side only, no torch).

A list is a text file with one image path a line, relative to a data root (absolute paths are
kept as they are); blank lines and text after '#' are ignored. See calib/README.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import DataError

log = logging.getLogger(__name__)

# Fewer images than this give noisy ranges (TensorRT and NNCF recommend about 300-500).
RECOMMENDED_IMAGES = 300


class CalibList(list):
    """The image paths of a calibration list (a list of Path) plus what was read.

    Attributes:
        source: the list file.
        too_few: fewer than RECOMMENDED_IMAGES images are used (a warning was logged).
    """

    source: Path
    too_few: bool


def read_calib_list(path: str | Path, root: str | Path | None = None, limit: int | None = None) -> CalibList:
    """Read a calibration list and check that every file exists.

    Args:
        path: the list file.
        root: folder the relative paths start from (None: the list's own folder).
        limit: use only the first `limit` images.

    Returns:
        The image paths (a list of Path with `.too_few` set when fewer than 300 are used).

    Raises:
        DataError: the list is missing or empty, or names a file that does not exist (the first
            such file is named).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration list '{path}' does not exist; pass a text file of image paths such as calib/camvid_train_300.txt")
    base = Path(root).expanduser() if root is not None else path.parent
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"calibration list '{path}' cannot be read ({exc}); pass a UTF-8 text file") from None
    entries = [line.split("#", 1)[0].strip() for line in lines]
    images = [base / e for e in entries if e]
    if not images:
        raise DataError(f"calibration list '{path}' names no images; add one image path a line (relative to the data root)")
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise DataError(
            f"calibration list '{path}' names '{missing[0]}', which does not exist ({len(missing)} of {len(images)} missing); "
            f"fix the list or pass the data root it is relative to with --data-root (now '{base}')"
        )
    if limit is not None:
        if limit < 1:
            raise DataError(f"--num-images {limit} is invalid; use at least 1")
        images = images[:limit]
    out = CalibList(images)
    out.source = path
    out.too_few = len(images) < RECOMMENDED_IMAGES
    if out.too_few:
        log.warning(
            "calibrating on %d images from '%s': fewer than the recommended %d, ranges may be noisy",
            len(images),
            path,
            RECOMMENDED_IMAGES,
        )
    return out


def calibration_images(
    recipe: Any,
    *,
    calib_list: str | Path | None = None,
    data_root: str | Path | None = None,
    num_images: int | None = None,
) -> tuple[Callable[[int], np.ndarray], int, dict[str, Any]]:
    """The calibration images of a recipe, for every calibrator (edgeseg's and NNCF's alike).

    With a calibration list (the argument, else recipe.quant.calib_list) its images are used,
    relative to `data_root` (else recipe.data.root); `num_images` limits them (default: all of
    an explicit list, recipe.quant.calib_num_images of the recipe's). Without a list,
    `num_images` (default recipe.quant.calib_num_images) images spread evenly over the train
    split are used.

    Returns:
        (load, n, info): `load(i)` gives uint8 HxWx3 image i of n; info = {"calib_list",
        "num_images", "too_few"}.
    """
    from edgeseg.data.io import read_image
    from edgeseg.data.sources import open_source, synthetic_params

    listed = calib_list if calib_list is not None else recipe.quant.calib_list
    if listed is not None:
        limit = num_images if num_images is not None else (None if calib_list is not None else recipe.quant.calib_num_images)
        root = data_root if data_root is not None else recipe.data.root
        paths = read_calib_list(listed, root, limit)
        info = {"calib_list": str(listed), "num_images": len(paths), "too_few": paths.too_few}
        return (lambda i: read_image(paths[i])), len(paths), info
    d = recipe.data
    source = open_source(d.format, str(data_root) if data_root else d.root, d.train_split, synthetic_params(recipe))
    n = min(num_images or recipe.quant.calib_num_images, len(source))
    picks = np.linspace(0, len(source) - 1, n).round().astype(int).tolist()
    info = {"calib_list": f"{d.format}:{d.train_split}", "num_images": n, "too_few": n < RECOMMENDED_IMAGES}
    return (lambda i: source.load(picks[i])[0]), n, info
