"""The artifact contract: the one schema of meta.json, read and written by export and bench alike.

Every artifact folder holds its model files and `meta.json`, which says everything bench and
predict need (classes, normalisation, sizes, output stride, where the model came from). This
module needs only pydantic and the standard library, so it runs on a device without torch.

A meta.json is untrusted input: every field is type- and range-checked, the model file must be
a plain name inside the folder, and an error is one line naming the file, the key and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeseg.constants import MAX_SIDE
from edgeseg.errors import CheckpointError, TargetError, did_you_mean
from edgeseg.export.base import PRECISIONS, TARGETS
from edgeseg.fsutil import write_json
from edgeseg.schemas import ClassesMeta, NormalizationMeta, OutputStride, UniqueNames, one_line

META_FILE = "meta.json"
META_SCHEMA_VERSION = 1
# Files an artifact may gain on the device (engine cache, build logs): not part of its identity.
DERIVED_SUFFIXES = (".engine", ".plan", ".cache", ".log", ".tmp")


class IOMeta(BaseModel):
    """What the model takes and gives (edgeseg.export.io_spec reads it): absent means tensor in, logits out."""

    model_config = ConfigDict(extra="forbid")

    input: Literal["image", "tensor"]
    layout: Literal["NCHW", "NHWC"]
    output: Literal["labels", "logits"]
    labels_dtype: Literal["uint8", "int32"] | None = None
    # How the wrapped model was checked against the model it wraps (argmax agreement on real images).
    verification: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _dtype_with_labels(self) -> IOMeta:
        if (self.output == "labels") != (self.labels_dtype is not None):
            raise ValueError("labels_dtype is given exactly when output is 'labels'")
        return self


class ArtifactMeta(BaseModel):
    """The typed content of an artifact's meta.json (targets may add keys of their own)."""

    model_config = ConfigDict(extra="allow")

    schema_version: int
    target: str
    precision: str
    model_file: str = Field(min_length=1, max_length=255)
    input_name: str = Field(min_length=1)
    output_name: str = Field(min_length=1)
    input_size: list[int] = Field(min_length=2, max_length=2)
    output_stride: OutputStride
    classes: ClassesMeta
    normalization: NormalizationMeta
    data: dict[str, Any]
    quant: dict[str, Any] | None
    source_checkpoint: str | None
    source_checkpoint_sha256: str | None
    recipe_hash: str | None
    tool_versions: dict[str, str | None]
    # Mixed precision (edgeseg export --keep-float/--max-drop; see edgeseg.export.mixed): the
    # sensitivity layers kept in float, the convolutions whose weights stay float as a result
    # (every other one is INT8, weights and input), and how the layers were chosen.
    float_layers: UniqueNames = Field(default_factory=list)
    float_convs: UniqueNames = Field(default_factory=list)
    float_source: dict[str, Any] | None = None
    io: IOMeta | None = None
    # False when `export --force` kept an artifact that failed a verification gate (listed, with figures).
    verified: bool = True
    verification_failures: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("target")
    @classmethod
    def _known_target(cls, v: str) -> str:
        if v not in TARGETS:
            raise ValueError(f"unknown target{did_you_mean(v, TARGETS)}; this edgeseg knows {', '.join(TARGETS)}")
        return v

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, v: str) -> str:
        if v not in PRECISIONS:
            raise ValueError(f"use one of {', '.join(PRECISIONS)}")
        return v

    @field_validator("model_file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in (".", "..") or v.startswith("."):
            raise ValueError("must be a file name inside the artifact folder, not a path")
        return v

    @field_validator("input_size")
    @classmethod
    def _size(cls, v: list[int]) -> list[int]:
        if not all(8 <= s <= MAX_SIDE for s in v):
            raise ValueError(f"must be [height, width], each in 8..{MAX_SIDE}")
        return v

    @model_validator(mode="after")
    def _float_layers(self) -> ArtifactMeta:
        if (self.float_layers or self.float_convs) and self.precision != "int8":
            raise ValueError(f"float_layers/float_convs belong to INT8 artifacts, this one is {self.precision}")
        if self.float_convs and not self.float_layers:
            raise ValueError("float_convs lists convolutions but float_layers is empty")
        return self


def validate_meta(meta: Any, where: str) -> ArtifactMeta:
    """Check a meta.json mapping against the contract; CheckpointError (one line) when it fails."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} is not a JSON object; re-export the artifact")
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{where} has no schema_version: it was written by an older edgeseg; re-export the artifact with this one")
    if version != META_SCHEMA_VERSION:
        fix = "upgrade edgeseg" if version > META_SCHEMA_VERSION else "re-export the artifact with this edgeseg"
        raise CheckpointError(f"{where} has schema_version {version}, this edgeseg reads {META_SCHEMA_VERSION}: {fix}")
    try:
        return ArtifactMeta.model_validate(meta)
    except ValidationError as exc:
        raise one_line(exc, where, "re-export the artifact with this edgeseg") from None


def read_meta(artifact: str | Path, *, target: str | None = None, input_size: Any = None) -> dict[str, Any]:
    """Read and validate the meta.json of an artifact folder; returns it as a dict.

    Args:
        artifact: the artifact folder.
        target: when given, the target the caller can load (another target is a TargetError).
        input_size: when given, the [H, W] the caller will feed (another size is a TargetError).

    Raises:
        CheckpointError: no folder, no or unreadable meta.json, another schema, a bad field, or a
            missing model file.
        TargetError: the artifact is for another target or input size.
    """
    artifact = Path(artifact)
    if not artifact.exists():
        raise CheckpointError(f"artifact folder '{artifact}' does not exist; pass a folder written by 'edgeseg export'")
    if not artifact.is_dir():
        raise CheckpointError(f"'{artifact}' is a file, not an artifact folder; pass the folder written by 'edgeseg export'")
    path = artifact / META_FILE
    if not path.is_file():
        raise CheckpointError(f"'{artifact}' has no {META_FILE}, so it is not an edgeseg artifact; export it with 'edgeseg export'")
    if path.stat().st_size > 16 << 20:
        raise CheckpointError(f"'{path}' is {path.stat().st_size >> 20} MiB, far more than any meta.json; re-export the artifact")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"'{path}' is not UTF-8 text; re-export the artifact") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON ({type(exc).__name__}); re-export the artifact") from None
    validate_meta(meta, f"'{path}'")
    if target is not None and meta["target"] != target:
        raise TargetError(f"'{artifact}' is a {meta['target']} artifact, not {target}; load it with the {meta['target']} runtime")
    if input_size is not None and list(input_size) != list(meta["input_size"]):
        want = "x".join(str(s) for s in input_size)
        have = "x".join(str(s) for s in meta["input_size"])
        raise TargetError(f"'{artifact}' was exported for input {have}, not {want}; feed {have} or re-export with --input-size {want}")
    model = artifact / meta["model_file"]
    if not model.exists():
        raise CheckpointError(f"'{artifact}' lacks its model file '{meta['model_file']}'; the folder was altered, re-export it")
    if model.is_file() and model.stat().st_size == 0:
        raise CheckpointError(f"'{model}' is empty (0 bytes); the artifact is damaged: re-export it")
    return meta


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    """Validate `meta` and write it atomically as folder/meta.json."""
    validate_meta(meta, f"meta of '{folder}'")
    write_json(Path(folder) / META_FILE, meta)


def model_files(folder: str | Path, model_file: str) -> list[Path]:
    """The model and its companions (model.xml + model.bin, model.onnx + model.onnx.data), sorted.

    A folder model (.mlpackage) counts with every file under it. Engine caches and logs built on
    the device, and hidden files, are left out: they are derived from the artifact, not part of it.
    """
    folder = Path(folder)
    model = folder / model_file
    if model.is_dir():
        found = [p for p in model.rglob("*") if p.is_file()]
    else:
        stem = model_file.split(".")[0]
        found = [p for p in folder.iterdir() if p.is_file() and (p.name == model_file or p.name.startswith(f"{stem}."))]
    return sorted(p for p in found if not p.name.endswith(DERIVED_SUFFIXES) and not p.name.startswith("."))


def model_size(folder: str | Path, model_file: str) -> int:
    """Bytes of an artifact's model files (see model_files)."""
    return sum(p.stat().st_size for p in model_files(folder, model_file))
