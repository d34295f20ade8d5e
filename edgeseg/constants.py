"""Values several modules check, each owned here once, with the one check that guards it.

Torch-free and imports nothing of edgeseg but errors, so every layer (config, models, quant,
the device-side bench) can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgeseg.errors import ConfigError, did_you_mean

OUTPUT_STRIDES = (8, 16, 32)
HEADS = ("deeplabv3plus", "deeplabv3plus_s2", "deeplabv3plus_dw", "deeplabv3")  # decoder heads of build_model
CALIB_METHODS = ("max", "percentile", "entropy", "mse")
MAX_SIDE = 8192  # pixels a side: beyond this an input is not an edge-device frame (and allocates GBs)
PERCENTILE_MIN, PERCENTILE_MAX = 50.0, 100.0  # calibration percentile: (min, max]


def choices(values: Sequence[object], last: str = "or") -> str:
    """(8, 16, 32) -> '8, 16 or 32' (`last` joins the final two)."""
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else f"{', '.join(text[:-1])} {last} {text[-1]}"


def invalid(name: str, value: object, fix: str) -> ConfigError:
    """The error for a bad value of a recipe key ('section.key') or of an option or argument ('--method').

    Recipe keys read "recipe key 'quant.percentile' = 101.0 is invalid: <fix>", anything else
    "--percentile 101.0 is invalid; <fix>".
    """
    if "." in name and not name.startswith("-"):
        return ConfigError(f"recipe key '{name}' = {value!r} is invalid: {fix}")
    return ConfigError(f"{name} {value!r} is invalid; {fix}")


def check_output_stride(value: int, name: str) -> int:
    """`value` when it is one of OUTPUT_STRIDES, else ConfigError naming `name` (see invalid)."""
    if value not in OUTPUT_STRIDES:
        raise invalid(name, value, f"use {choices(OUTPUT_STRIDES)}")
    return value


def check_calib_method(value: str, name: str) -> str:
    """`value` when it is one of CALIB_METHODS, else ConfigError naming `name`, with a "did you mean"."""
    if value not in CALIB_METHODS:
        raise invalid(name, value, f"use one of {', '.join(CALIB_METHODS)}{did_you_mean(str(value), CALIB_METHODS)}")
    return value


def check_percentile(value: float, name: str) -> float:
    """`value` when it is a calibration percentile in (50, 100], else ConfigError naming `name`."""
    if not PERCENTILE_MIN < value <= PERCENTILE_MAX:
        raise invalid(name, value, f"use a value in ({PERCENTILE_MIN:g}, {PERCENTILE_MAX:g}], e.g. 99.99")
    return value
