"""What bench needs to know about a thing to bench: an exported artifact folder or a checkpoint.

An artifact folder is read from its meta.json alone (no torch). A `.pt` checkpoint is the PyTorch
eager baseline: torch is imported only for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.errors import CheckpointError, ConfigError, did_you_mean
from edgeseg.export.base import META_SCHEMA_VERSION, TARGETS

# meta.json keys bench reads (the full list is edgeseg.export.base.ARTIFACT_META_KEYS).
REQUIRED_META = (
    "target",
    "precision",
    "model_file",
    "input_name",
    "output_name",
    "input_size",
    "output_stride",
    "classes",
    "normalization",
)
# Files an artifact may gain on the device (engine cache, build logs): not part of its identity.
_DERIVED_SUFFIXES = (".engine", ".plan", ".cache", ".log", ".tmp")


@dataclass
class Artifact:
    """A benchable model: its folder (or checkpoint file) and the metadata bench uses."""

    path: Path
    target: str  # a key of TARGETS, or "torch" for a checkpoint
    precision: str
    meta: dict[str, Any]
    input_size: tuple[int, int]
    output_stride: int | None
    model_size_mb: float
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def quant_method(self) -> str | None:
        quant = self.meta.get("quant")
        if not isinstance(quant, dict):
            return None
        # A QAT model's ranges came from calibration, then training: "qat" says what it is.
        return "qat" if quant.get("qat") else quant.get("method")


def open_artifact(path: str | Path, *, output_stride: int | None = None, input_size: tuple[int, int] | None = None) -> Artifact:
    """Open an artifact folder (meta.json) or a `.pt` checkpoint.

    Args:
        path: artifact folder written by `edgeseg export`, or a checkpoint `.pt`.
        output_stride: checkpoints only: run at this output stride (default: the checkpoint's).
        input_size: checkpoints only: (H, W) to run at (default: the recipe's export/eval/crop size).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        return _open_checkpoint(path, output_stride, input_size)
    if not path.exists():
        raise CheckpointError(f"artifact '{path}' does not exist; pass a folder written by 'edgeseg export' or a .pt checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is neither an artifact folder nor a .pt checkpoint; pass a folder written by 'edgeseg export'")
    if output_stride is not None or input_size is not None:
        raise ConfigError(
            f"--output-stride/--input-size apply to .pt checkpoints only; '{path}' was exported at a fixed size: re-export it"
        )
    meta = read_meta(path)
    model = path / meta["model_file"]
    if not model.exists():
        raise CheckpointError(f"artifact '{path}' names model_file '{meta['model_file']}' but it is missing; re-export the artifact")
    files = model_files(path, meta["model_file"])
    return Artifact(
        path=path,
        target=meta["target"],
        precision=meta["precision"],
        meta=meta,
        input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
        output_stride=meta["output_stride"],
        model_size_mb=sum(f.stat().st_size for f in files) / 1e6,
        sha256=_hash_files(path, [path / "meta.json", *files]),
    )


def read_meta(folder: Path) -> dict[str, Any]:
    """Read and check an artifact's meta.json (one-line errors naming the key and the fix)."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"artifact folder '{folder}' has no meta.json; pass a folder written by 'edgeseg export' (or re-export it)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{meta_path}' is not valid JSON ({exc}); re-export the artifact") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{meta_path}' is not a JSON object; re-export the artifact")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"'{meta_path}' has no '{missing[0]}'; re-export the artifact with this edgeseg")
    version = meta.get("schema_version", META_SCHEMA_VERSION)
    if not isinstance(version, int) or version > META_SCHEMA_VERSION:
        raise CheckpointError(
            f"'{meta_path}' has schema_version {version!r}, newer than this edgeseg reads ({META_SCHEMA_VERSION}); upgrade edgeseg"
        )
    if meta["target"] not in TARGETS:
        raise CheckpointError(
            f"'{meta_path}' names unknown target '{meta['target']}'{did_you_mean(str(meta['target']), TARGETS)}; re-export the artifact"
        )
    return meta


def model_files(folder: Path, model_file: str) -> list[Path]:
    """The model and its companions (model.xml + model.bin, model.onnx + model.onnx.data), sorted.

    A folder model (.mlpackage) counts with every file under it. Engine caches and logs built on
    the device are left out: they are derived from the artifact, not part of it.
    """
    model = folder / model_file
    if model.is_dir():
        found = [p for p in model.rglob("*") if p.is_file()]
    else:
        stem = model_file.split(".")[0]
        found = [p for p in folder.iterdir() if p.is_file() and (p.name == model_file or p.name.startswith(f"{stem}."))]
    return sorted(p for p in found if not p.name.endswith(_DERIVED_SUFFIXES) and not p.name.startswith("."))


def _hash_files(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _open_checkpoint(path: Path, output_stride: int | None, input_size: tuple[int, int] | None) -> Artifact:
    from edgeseg.train.checkpoint import checkpoint_recipe, load_checkpoint  # torch: .pt rows only

    ckpt = load_checkpoint(path)
    recipe = checkpoint_recipe(ckpt)
    if output_stride is not None and output_stride not in (8, 16, 32):
        raise ConfigError(f"--output-stride {output_stride} is invalid; use 8, 16 or 32")
    size = input_size or tuple(recipe.export.input_size or recipe.data.eval_size or recipe.data.crop_size)
    d = recipe.data
    synthetic = {
        "num_train": d.synthetic_num_train,
        "num_val": d.synthetic_num_val,
        "size": list(d.synthetic_size),
        "seed": d.synthetic_seed,
    }
    meta = {
        "target": "torch",
        "precision": "fakequant" if ckpt.get("quant") else "fp32",
        "input_size": [int(size[0]), int(size[1])],
        "output_stride": output_stride or ckpt["arch"]["output_stride"],
        "classes": ckpt["classes"],
        "normalization": ckpt["normalization"],
        "data": {"format": d.format, "root": d.root, "split": d.val_split, "synthetic": synthetic},
        "quant": ckpt.get("quant_meta"),
    }
    params = sum(t.numel() * t.element_size() for t in ckpt["model"].values() if hasattr(t, "numel"))
    return Artifact(
        path=path,
        target="torch",
        precision=meta["precision"],
        meta=meta,
        input_size=(int(size[0]), int(size[1])),
        output_stride=meta["output_stride"],
        model_size_mb=params / 1e6,
        sha256=_hash_files(path.parent, [path]),
    )
