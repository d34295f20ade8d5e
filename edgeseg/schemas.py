"""Schemas shared by the files edgeseg reads (checkpoint metadata, artifact meta.json): pydantic only.

An error becomes one line naming the file, the key, the value and the fix (`one_line`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

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
