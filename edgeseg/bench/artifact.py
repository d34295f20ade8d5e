"""What bench needs to know about a thing to bench: an exported artifact folder or a checkpoint.

An artifact folder is read from its meta.json alone (no torch). A `.pt` checkpoint is the PyTorch
eager baseline: torch is imported only for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.constants import check_output_stride
from edgeseg.errors import CheckpointError, ConfigError
from edgeseg.export.meta import META_FILE, model_files, read_meta


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
        method = "qat" if quant.get("qat") else quant.get("method")
        # A quantized checkpoint run in float: its weights, without quantization (see float_weights).
        return f"{method} weights" if self.meta.get("float_weights") else method


def open_artifact(
    path: str | Path, *, output_stride: int | None = None, input_size: tuple[int, int] | None = None, float_weights: bool = False
) -> Artifact:
    """Open an artifact folder (meta.json) or a `.pt` checkpoint.

    Args:
        path: artifact folder written by `edgeseg export`, or a checkpoint `.pt`.
        output_stride: checkpoints only: run at this output stride (default: the checkpoint's).
        input_size: checkpoints only: (H, W) to run at (default: the recipe's export/eval/crop size).
        float_weights: quantized checkpoints only: run them with quantization off (a QAT
            checkpoint's weights in float separate what fine-tuning did from what INT8 costs).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        art = _open_checkpoint(path, output_stride, input_size)
        if float_weights:
            if art.precision != "fakequant":
                raise ConfigError(f"--float-weights runs a quantized checkpoint in float; '{path}' is already FP32: leave it out")
            art.precision = art.meta["precision"] = "fp32"
            art.meta["float_weights"] = True
        return art
    if float_weights:
        raise ConfigError(f"--float-weights applies to quantized .pt checkpoints only, not to the artifact '{path}'")
    if not path.exists():
        raise CheckpointError(f"artifact '{path}' does not exist; pass a folder written by 'edgeseg export' or a .pt checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is neither an artifact folder nor a .pt checkpoint; pass a folder written by 'edgeseg export'")
    if output_stride is not None or input_size is not None:
        raise ConfigError(
            f"--output-stride/--input-size apply to .pt checkpoints only; '{path}' was exported at a fixed size: re-export it"
        )
    meta = read_meta(path)
    files = model_files(path, meta["model_file"])
    return Artifact(
        path=path,
        target=meta["target"],
        precision=meta["precision"],
        meta=meta,
        input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
        output_stride=meta["output_stride"],
        model_size_mb=sum(f.stat().st_size for f in files) / 1e6,
        sha256=_hash_files(path, [path / META_FILE, *files]),
    )


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
    if output_stride is not None:
        check_output_stride(output_stride, "--output-stride")
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
