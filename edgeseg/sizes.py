"""Parsers of the CLI's size options (--input-size HxW, --output-strides 8,16,32).

Torch-free: `edgeseg bench --input-size` runs where only a runtime is installed.
"""

from __future__ import annotations

from edgeseg.constants import MAX_SIDE, OUTPUT_STRIDES, choices
from edgeseg.errors import ConfigError

DLA_CORES = (0, 1)  # Jetson AGX Xavier and Orin: two DLA engines


def parse_size(text: str) -> tuple[int, int]:
    """'360x480' -> (360, 480)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"input size '{text}' must look like HEIGHTxWIDTH, e.g. 360x480") from None
    if h < 32 or w < 32:
        raise ConfigError(f"input size '{text}' is too small; use at least 32x32")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ConfigError(f"input size '{text}' is over {MAX_SIDE} pixels a side; use a size the device runs, e.g. 720x1280")
    return h, w


def check_dla_core(core: int | None) -> int | None:
    """A Jetson DLA core: 0 or 1 (Xavier and Orin have two); None for the GPU."""
    if core is not None and core not in DLA_CORES:
        raise ConfigError(f"--dla {core} is invalid; Jetson DLA cores are {choices(DLA_CORES)} (omit --dla for the GPU)")
    return core


def parse_strides(text: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32], each checked."""
    example = ",".join(map(str, OUTPUT_STRIDES))
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"output strides '{text}' must be comma-separated numbers, e.g. {example}") from None
    bad = [v for v in values if v not in OUTPUT_STRIDES]
    if bad or not values:
        raise ConfigError(f"output stride {bad[0] if bad else text!r} is invalid; use {choices(OUTPUT_STRIDES, 'and/or')}")
    return values
