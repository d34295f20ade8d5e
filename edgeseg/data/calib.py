"""Calibration image lists (numpy/Pillow side only, no torch).

A list is a text file with one image path a line, relative to a data root (absolute paths are
kept as they are); blank lines and text after '#' are ignored. See calib/README.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
