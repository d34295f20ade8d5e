"""Recipe schema (typed, validated) and `load_recipe(path, overrides)`.

A recipe is a YAML file with the sections data, model, train, quant, export and bench. Every key
is declared here with its type; unknown keys, wrong types and out-of-range values raise
ConfigError naming the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeseg.constants import HEADS, MAX_SIDE, check_calib_method, check_output_stride, check_percentile, invalid
from edgeseg.constants import OUTPUT_STRIDES as OUTPUT_STRIDES  # re-exported: owned by edgeseg.constants
from edgeseg.errors import ConfigError, did_you_mean, printable

BASE_LOSSES = ("ce", "ohem", "balanced", "lovasz")
LOSSES = BASE_LOSSES + tuple(f"{b}+lovasz" for b in BASE_LOSSES if b != "lovasz")


@dataclass
class DataConfig:
    format: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    train_splits: list[str] | None = None  # several splits trained as one, e.g. [train, val]
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [128, 128])
    eval_size: list[int] | None = None
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    color_jitter: float = 0.2
    num_workers: int = 0
    synthetic_num_train: int = 64
    synthetic_num_val: int = 16
    synthetic_size: list[int] = field(default_factory=lambda: [128, 128])
    synthetic_seed: int = 0
    use_aug: bool = False


@dataclass
class ModelConfig:
    head: str = "deeplabv3plus"
    output_stride: int = 16
    width_mult: float = 1.0
    aux_loss: bool = False
    multi_grid: list[int] | None = None
    backbone_weights: str | None = None
    freeze_backbone_bn: bool = False


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.01
    backbone_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_iters: int = 0
    poly_power: float = 0.9
    amp: bool = True
    channels_last: bool = True
    aux_weight: float = 0.4
    loss: str = "ce"  # see edgeseg.train.losses.LOSSES
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000  # pixels per batch
    lovasz_weight: float = 1.0  # for <base>+lovasz
    class_weight_power: float = 1.0  # balanced: (median / f_c) ** power; 0.5 is softer
    class_weight_max: float = 0.0  # balanced: clip weights above this (0: no clip)
    ema: float = 0.0  # decay of the weights' exponential moving average (0: off), e.g. 0.999
    eval_every: int = 1
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto (a CUDA GPU when there is one), cpu or cuda
    max_iters: int | None = None
    bn_recalibrate: int = 0
    log_every: int = 10
    ckpt_every: int = 0  # also save last.pt every N iterations (0: at epoch ends only)


@dataclass
class QuantConfig:
    enabled: bool = False
    epochs: int = 1
    lr: float = 0.001
    calib_method: str = "percentile"
    percentile: float = 99.99
    calib_num_images: int = 64
    calib_list: str | None = None
    freeze_ranges_epoch: int | None = None
    max_iters: int | None = None


@dataclass
class ExportConfig:
    input_size: list[int] | None = None
    opset: int = 17
    targets: list[str] = field(default_factory=lambda: ["onnx", "openvino"])


@dataclass
class BenchConfig:
    runs: int = 50
    warmup: int = 10
    threads: int = 2


@dataclass
class Recipe:
    name: str = "recipe"
    num_classes: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short content hash of the resolved recipe, carried by every artifact."""
        d = self.to_dict()
        d["train"].pop("device", None)  # where a recipe runs is not part of what it makes
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"recipe key '{where}' must be a list, got {value!r}")
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"recipe key '{where}' must be true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"recipe key '{where}' must be a number, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"recipe key '{where}' must be of type {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe section '{prefix.rstrip('.')}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(
                f"unknown recipe key '{printable(prefix + str(key))}'{did_you_mean(str(key), names)}; valid keys here: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _validate(r: Recipe) -> None:
    check_output_stride(r.model.output_stride, "model.output_stride")
    if r.model.head not in HEADS:
        raise invalid("model.head", r.model.head, f"use one of {', '.join(HEADS)}")
    if not 0.1 <= r.model.width_mult <= 2.0:
        raise invalid("model.width_mult", r.model.width_mult, "use a value in [0.1, 2.0]")
    for key in ("lr", "weight_decay", "momentum"):
        value = getattr(r.train, key)
        if value < 0 or (key == "lr" and value == 0):
            raise invalid(f"train.{key}", value, "must be positive")
    if r.train.device not in ("auto", "cpu", "cuda"):
        raise invalid("train.device", r.train.device, "use auto, cpu or cuda")
    if r.train.epochs < 1 or r.train.batch_size < 1:
        raise invalid("train.epochs/batch_size", (r.train.epochs, r.train.batch_size), "use >= 1")
    for key in ("crop_size", "synthetic_size"):
        size = getattr(r.data, key)
        if len(size) != 2 or min(size) < 32 or max(size) > MAX_SIDE or any(s % 8 for s in size):
            raise invalid(f"data.{key}", size, f"give [height, width], each in 32..{MAX_SIDE} and a multiple of 8")
    for key, size in (("data.eval_size", r.data.eval_size), ("export.input_size", r.export.input_size)):
        if size is not None and (len(size) != 2 or min(size) < 32 or max(size) > MAX_SIDE):
            raise invalid(key, size, f"give [height, width], each in 32..{MAX_SIDE}")
    for key in ("epochs", "batch_size", "eval_every", "log_every"):
        if not 1 <= getattr(r.train, key) <= 100_000:
            raise invalid(f"train.{key}", getattr(r.train, key), "use a whole number in 1..100000")
    for key in ("warmup_iters", "bn_recalibrate", "ckpt_every", "seed"):
        if not 0 <= getattr(r.train, key) <= 10_000_000:
            raise invalid(f"train.{key}", getattr(r.train, key), "use a whole number >= 0")
    if r.train.max_iters is not None and not 1 <= r.train.max_iters <= 10_000_000:
        raise invalid("train.max_iters", r.train.max_iters, "use a whole number >= 1, or null")
    lo, hi = (r.data.scale_range + [0, 0])[:2]
    if len(r.data.scale_range) != 2 or not 0 < lo <= hi:
        raise invalid("data.scale_range", r.data.scale_range, "give [min, max] with 0 < min <= max")
    check_calib_method(r.quant.calib_method, "quant.calib_method")
    check_percentile(r.quant.percentile, "quant.percentile")
    if r.quant.lr <= 0:
        raise invalid("quant.lr", r.quant.lr, "must be positive")
    _validate_loss(r)
    if r.data.train_splits is not None and (not r.data.train_splits or len(set(r.data.train_splits)) != len(r.data.train_splits)):
        raise invalid("data.train_splits", r.data.train_splits, "give a non-empty list of distinct split names, e.g. [train, val]")


def _validate_loss(r: Recipe) -> None:
    t = r.train
    if t.loss not in LOSSES:
        raise invalid("train.loss", t.loss, f"use one of {', '.join(LOSSES)}{did_you_mean(t.loss, LOSSES)}")
    if not 0.0 < t.ohem_thresh <= 1.0:
        raise invalid("train.ohem_thresh", t.ohem_thresh, "use a probability in (0, 1], e.g. 0.7")
    if t.ohem_min_kept < 0:
        raise invalid("train.ohem_min_kept", t.ohem_min_kept, "use a pixel count >= 0, e.g. 100000")
    if not 0.0 <= t.lovasz_weight <= 100.0:
        raise invalid("train.lovasz_weight", t.lovasz_weight, "use a weight in [0, 100]")
    if not 0.0 <= t.class_weight_power <= 2.0:
        raise invalid("train.class_weight_power", t.class_weight_power, "use a value in [0, 2] (1: median frequency, 0.5: its square root)")
    if not 0.0 <= t.class_weight_max <= 1000.0:
        raise invalid("train.class_weight_max", t.class_weight_max, "use 0 (no clip) or a maximum weight up to 1000")
    if not 0.0 <= t.ema < 1.0:
        raise invalid("train.ema", t.ema, "use 0 (off) or a decay in (0, 1), e.g. 0.999")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-5 as a float, as YAML 1.2 does (YAML 1.1, PyYAML's, needs a dot: 1.0e-5)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _set_dotted(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key=value, e.g. train.lr=0.01")
    key, text = override.split("=", 1)
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
    node[parts[-1]] = value


MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100  # YAML anchors reused more than this: not a recipe
MAX_VALUES = 10_000  # values in a recipe once aliases are expanded (an alias bomb expands to billions)


def _plain(value: Any, where: str, depth: int = 0, seen: list[int] | None = None) -> Any:
    """A deep copy of YAML/JSON data with only JSON types; anything else is named with its key.

    Bounded: at most 20 levels and MAX_VALUES values, so recursive aliases and alias bombs end
    in one error line instead of a hang.
    """
    seen = [0] if seen is None else seen
    seen[0] += 1
    if seen[0] > MAX_VALUES:
        raise ConfigError(f"the recipe expands to more than {MAX_VALUES} values (YAML aliases?); write the values out")
    if depth > 20:
        raise ConfigError(f"recipe key '{printable(where or '(top)')}' nests more than 20 levels (a recursive alias?); write plain values")
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k), depth + 1, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]", depth + 1, seen) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"recipe key '{printable(where)}' = {value} is invalid: use a finite number")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(
        f"recipe key '{where}' is a {type(value).__name__} ({value!r:.40}); recipes hold numbers, strings and lists: quote it"
    )


def recipe_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Validate a raw mapping (plus `key=value` overrides) into a Recipe."""
    raw = _plain(raw, "")  # deep copy, plain types only
    for override in overrides or []:
        _set_dotted(raw, override)
    raw = _plain(raw, "")  # overrides are YAML too: the same rules
    recipe = _build(Recipe, raw, "")
    _validate(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a YAML recipe.

    Args:
        path: the YAML file.
        overrides: `section.key=value` strings applied on top (values parsed as YAML).

    Raises:
        ConfigError: missing file, YAML syntax error (with line), unknown key, bad type or range.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe '{path}' is a folder; pass a YAML file such as recipes/smoke.yaml")
    if not path.is_file():
        raise ConfigError(f"recipe '{path}' does not exist; pass a YAML file such as recipes/smoke.yaml")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe '{path}' is {path.stat().st_size} bytes, over the 1 MiB a recipe may be; pass the YAML recipe")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"recipe '{path}' is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"recipe '{path}' cannot be read ({exc.strerror}); check its permissions") from None
    try:
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_ALIASES:
            raise ConfigError(f"recipe '{path}' reuses YAML anchors {aliases} times (over {MAX_ALIASES}); write the values out")
        raw = yaml.load(text, Loader=_Loader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"recipe '{path}' is not valid YAML{line}; fix the syntax there") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of sections (data, model, train, ...)")
    raw.setdefault("name", path.stem)
    try:
        return recipe_from_dict(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
