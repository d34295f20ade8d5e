"""Schemas shared by the files edgeseg reads (checkpoint metadata, artifact meta.json): pydantic only.

An error becomes one line naming the file, the key, the value and the fix (`one_line`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeseg.constants import HEADS, OUTPUT_STRIDES
from edgeseg.errors import CheckpointError


def _output_stride(v: int) -> int:
    if v not in OUTPUT_STRIDES:
        raise ValueError(f"use one of {', '.join(map(str, OUTPUT_STRIDES))}")
    return v


# An output stride field of any schema: one of OUTPUT_STRIDES.
OutputStride = Annotated[int, AfterValidator(_output_stride)]


class ClassesMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    names: list[str] = Field(min_length=1, max_length=1000)
    colors: list[list[int]]
    ignore_index: int = Field(default=255, ge=0, le=255)

    @model_validator(mode="after")
    def _colors_match(self) -> ClassesMeta:
        if len(self.colors) != len(self.names) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.colors):
            raise ValueError("colors must be one [r, g, b] in 0..255 per class name")
        return self


class NormalizationMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: list[float], info: Any) -> list[float]:
        if not all(math.isfinite(x) for x in v) or (info.field_name == "std" and not all(x > 0 for x in v)):
            raise ValueError("must be 3 finite numbers" + (", each > 0" if info.field_name == "std" else ""))
        return v


def one_line(exc: ValidationError, where: str, fix: str) -> CheckpointError:
    """The first problem of a validation error as one CheckpointError line."""
    err = exc.errors()[0]
    if not err["loc"]:  # a rule across fields: its message says which
        return CheckpointError(f"{where}: {err['msg'].removeprefix('Value error, ')}; {fix}")
    key = ".".join(str(p) for p in err["loc"])[:80].encode("unicode_escape").decode() or "(top level)"
    if err["type"] == "missing":
        return CheckpointError(f"{where} lacks '{key}'; {fix}")
    value = err.get("input")
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return CheckpointError(f"{where}: '{key}' = {shown} is invalid ({err['msg']}); {fix}")


class ArchMeta(BaseModel):
    """A checkpoint's architecture: what build_model gets back."""

    model_config = ConfigDict(extra="allow")

    num_classes: int = Field(ge=1, le=1000)
    output_stride: OutputStride
    width_mult: float = Field(ge=0.1, le=2.0)
    head: str
    aux_loss: bool
    multi_grid: list[int] | None = None

    @field_validator("head")
    @classmethod
    def _head(cls, v: str) -> str:
        if v not in HEADS:
            raise ValueError(f"use one of {', '.join(HEADS)}")
        return v


class CheckpointMeta(BaseModel):
    """Everything of a checkpoint but its tensors, checked before a model is built from it."""

    model_config = ConfigDict(extra="allow")

    format_version: int = Field(ge=1)
    arch: ArchMeta
    recipe: dict[str, Any]
    classes: ClassesMeta
    normalization: NormalizationMeta
    model: dict[str, Any]

    @model_validator(mode="after")
    def _classes_match(self) -> CheckpointMeta:
        if len(self.classes.names) != self.arch.num_classes:
            raise ValueError(f"classes has {len(self.classes.names)} names but arch.num_classes is {self.arch.num_classes}")
        return self


# --- layer names and the sensitivity file (edgeseg sensitivity --json, read by export) ----------

MAX_LAYERS = 10_000  # far more than any model's quantized layers


def _module_name(v: str) -> str:
    if not (1 <= len(v) <= 200) or not all(c.isalnum() or c in "._" for c in v):
        raise ValueError("must be a module name (letters, digits, '.' and '_', 1..200 characters)")
    return v


# A module path of the model, e.g. decoder.fuse.0.0.0 or encoder.features.3.in_q.
ModuleName = Annotated[str, AfterValidator(_module_name)]
Miou = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]


def _unique(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError(f"lists '{next(n for n in names if names.count(n) > 1)}' twice")
    return names


UniqueNames = Annotated[list[ModuleName], Field(max_length=MAX_LAYERS), AfterValidator(_unique)]


class LayerScoreMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ModuleName
    convs: list[ModuleName] = Field(max_length=MAX_LAYERS)
    miou: Miou
    gain: float = Field(ge=-100.0, le=100.0, allow_inf_nan=False)
    per_class_iou: dict[str, Miou | None]
    macs: int | None = Field(default=None, ge=0, le=10**15)  # absent in files written before it was recorded


class CurvePointMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(ge=1, le=MAX_LAYERS)
    miou: Miou
    per_class_iou: dict[str, Miou | None] | None = None  # absent in files written before it was recorded
    layers: UniqueNames


class ReferenceMeta(BaseModel):
    """The images a sensitivity measurement scored and its FP32 and full-INT8 figures on them."""

    model_config = ConfigDict(extra="forbid")

    images: int = Field(ge=1, le=10_000)
    float_miou: Miou
    int8_miou: Miou
    float_per_class: dict[str, Miou | None]
    int8_per_class: dict[str, Miou | None]


class RankingMeta(ReferenceMeta):
    """The reference the layer scores were measured against, when not the curve's."""

    source: str | None = Field(default=None, max_length=4096)  # the file it was reused from


class SensitivityMeta(ReferenceMeta):
    """A sensitivity file: every layer's score, ranked, and the cumulative curve (on `images`)."""

    layers: list[LayerScoreMeta] = Field(min_length=1, max_length=MAX_LAYERS)
    cumulative: list[CurvePointMeta] = Field(max_length=MAX_LAYERS)
    seconds: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    checkpoint: str | None = Field(default=None, max_length=4096)
    checkpoint_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    output_stride: Literal[8, 16, 32] | None = None
    max_class_drop: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    ranking: RankingMeta | None = None
    macs: int | None = Field(default=None, ge=0, le=10**15)

    @model_validator(mode="after")
    def _consistent(self) -> SensitivityMeta:
        names = [s.name for s in self.layers]
        _unique(names)
        if any(a.gain < b.gain for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError("layers must be ranked by gain, highest first, as 'edgeseg sensitivity' writes them")
        # The curve keeps one more layer at each point: the best-ranked ones in order, or (with a
        # class limit) its own order of the ranked layers.
        order = self.cumulative[-1].layers if self.cumulative and self.max_class_drop is not None else names
        if any(p.k != i + 1 or len(p.layers) != p.k or p.layers != order[: p.k] for i, p in enumerate(self.cumulative)):
            raise ValueError("the cumulative curve must keep the 1, 2, 3... layers of its order, one more at each point")
        if not set(order) <= set(names):
            raise ValueError(f"the cumulative curve keeps '{sorted(set(order) - set(names))[0]}', which is not a ranked layer")
        return self


def validate_sensitivity(data: Any, where: str, fix: str) -> dict[str, Any]:
    """Check a sensitivity file's content; CheckpointError (one line) when it fails."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} is not a JSON object; {fix}")
    try:
        return SensitivityMeta.model_validate(data).model_dump()
    except ValidationError as exc:
        raise one_line(exc, where, fix) from None
