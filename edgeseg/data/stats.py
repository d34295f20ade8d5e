"""Per-class pixel statistics of a training split, cached by the data's fingerprint (numpy only).

Used by the `balanced` loss: counting 367 CamVid masks takes a few seconds, a 3,000-image
Cityscapes split a minute, so the counts are cached under the user's cache folder, keyed by a
hash of the mask files' names, sizes and modification times (a changed mask recounts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.fsutil import write_json

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """$EDGESEG_CACHE, else $XDG_CACHE_HOME/edgeseg, else ~/.cache/edgeseg."""
    if os.environ.get("EDGESEG_CACHE"):
        return Path(os.environ["EDGESEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeseg"


def fingerprint(source: Any) -> str:
    """A hash that changes when any mask of `source` (or its label mapping) changes."""
    h = hashlib.sha256(type(source).__name__.encode())
    h.update(json.dumps(list(source.classes.names)).encode())
    pairs = getattr(source, "pairs", None)
    if pairs is None:  # generated data: its parameters and names define it
        h.update(repr(sorted(vars(source).items())).encode())
        return h.hexdigest()[:24]
    for _, mask in pairs:
        st = Path(mask).stat()
        h.update(f"{Path(mask).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(np.asarray(source.lut).tobytes())
    return h.hexdigest()[:24]


def count_pixels(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, labelled pixels of the images each class appears in) over `source`."""
    n = source.classes.num_classes
    pixels = np.zeros(n, np.int64)
    image_pixels = np.zeros(n, np.int64)
    for i in range(len(source)):
        _, mask = source.load(i)
        counts = np.bincount(mask[mask < n].ravel(), minlength=n)[:n]
        pixels += counts
        image_pixels[counts > 0] += int(counts.sum())
    return pixels, image_pixels


def class_pixel_counts(source: Any, *, use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`count_pixels`, read from the cache when this exact data was counted before."""
    path = cache_dir() / "class_counts" / f"{fingerprint(source)}.json"
    if use_cache and path.is_file():
        try:
            data = json.loads(path.read_text())
            pixels, image_pixels = np.asarray(data["pixels"], np.int64), np.asarray(data["image_pixels"], np.int64)
            if pixels.shape == image_pixels.shape == (source.classes.num_classes,) and (pixels >= 0).all():
                return pixels, image_pixels
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recounted and rewritten
        log.warning("class-count cache %s is damaged; recounting", path)
    pixels, image_pixels = count_pixels(source)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"pixels": pixels.tolist(), "image_pixels": image_pixels.tolist()})
        except OSError as exc:  # a read-only home must not stop training
            log.info("class counts not cached (%s)", exc)
    return pixels, image_pixels
