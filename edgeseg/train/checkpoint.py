"""Checkpoints: written atomically, validated on load, enough to rebuild the model alone."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from edgeseg import __version__
from edgeseg.config import Recipe, recipe_from_dict
from edgeseg.constants import check_output_stride
from edgeseg.data.classes import ClassInfo
from edgeseg.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.errors import CheckpointError, ConfigError, printable
from edgeseg.fsutil import write_bytes
from edgeseg.models import DeepLab, build_model
from edgeseg.quant import restore_quantized
from edgeseg.schemas import CheckpointMeta, one_line

FORMAT_VERSION = 1


def arch_of(model: DeepLab, recipe: Recipe) -> dict[str, Any]:
    return {
        "num_classes": model.num_classes,
        "output_stride": model.output_stride,
        "width_mult": recipe.model.width_mult,
        "head": model.head_name,
        "aux_loss": model.aux is not None,
        "multi_grid": recipe.model.multi_grid,
        # Dilation rule of the encoder (see MobileNetV2Encoder.set_output_stride); absent in
        # checkpoints written before the a trous fix, which are rebuilt with the old rule.
        "atrous": "legacy" if model.encoder.legacy_dilation else "exact",
    }


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, recipe: Recipe, classes: ClassInfo, **state: Any) -> None:
    """Write a checkpoint atomically (model, recipe, classes, normalisation and any extra state)."""
    base = getattr(model, "module", model)
    payload = {
        "format_version": FORMAT_VERSION,
        "edgeseg_version": __version__,
        "arch": arch_of(base, recipe),
        "model": base.state_dict(),
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash(),
        "classes": classes.to_dict(),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        **state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint written by edgeseg."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass a .pt written by 'edgeseg train' or 'calibrate'")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes); it was not written completely: pass another .pt or retrain")
    ckpt = read_payload(path)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"'{path}' is not an edgeseg checkpoint (no format_version/arch); pass a .pt written by 'edgeseg train'")
    if not isinstance(ckpt["format_version"], int) or ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' was written by edgeseg {ckpt.get('edgeseg_version')} (format {ckpt['format_version']!r}); "
            f"this is edgeseg {__version__} (format {FORMAT_VERSION}): upgrade edgeseg"
        )
    check_meta(ckpt, path)
    check_finite(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


def check_meta(ckpt: dict[str, Any], path: str | Path) -> None:
    """Everything of a checkpoint but its tensors against CheckpointMeta, and its recipe against
    the recipe schema: one CheckpointError line naming the file and the key."""
    try:
        CheckpointMeta.model_validate(ckpt)
    except ValidationError as exc:
        raise one_line(exc, f"checkpoint '{path}'", "it is damaged or not from edgeseg: pass another .pt or retrain") from None
    try:
        recipe_from_dict(ckpt["recipe"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint '{path}' carries a bad recipe ({exc}); pass another .pt or retrain") from None


def read_payload(path: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain data only, never code.

    A checkpoint is untrusted input (users download them). An edgeseg checkpoint holds only
    tensors, numbers, strings, lists and dicts, so the restricted unpickler reads all of it, and
    a file that needs anything else (a crafted `__reduce__`, a pickled class) is refused.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a refused object: the bytes are not a checkpoint at all
            raise CheckpointError(f"'{path}' is not a readable checkpoint ({load_failure(exc)}); pass a .pt written by edgeseg") from None
        raise CheckpointError(
            f"'{path}' holds Python objects other than tensors and plain data; edgeseg refuses to unpickle them "
            "(they could run code): pass a checkpoint written by edgeseg"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"'{path}' is not a readable checkpoint ({load_failure(exc)}); pass a .pt written by edgeseg") from None


def load_failure(exc: BaseException) -> str:
    """Why torch.load failed, in one short printable phrase: `struct.error: unpack requires a
    buffer of 4 bytes`, `RuntimeError: PytorchStreamReader failed reading zip archive: not a ZIP
    archive`, `UnpicklingError: Unsupported operand 84`.

    The type alone can be a bare word (struct's exception class is named `error`), and torch's
    own messages wrap the reason in advice about `weights_only` that does not apply here.
    """
    kind = type(exc)
    module = kind.__module__.lstrip("_")
    name = kind.__qualname__ if module in ("builtins", "pickle") else f"{module}.{kind.__qualname__}"
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:  # the reason sits between torch's advice and its doc link
        text = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation", 1)[0].strip()
    text = text.split(". ", 1)[0].rstrip(".")  # the first sentence; the rest is torch's advice
    return f"{name}: {printable(text, 80)}" if text else name


def check_finite(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose weights or buffers hold NaN or inf (every reader, not only export)."""
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' has no model state dict; pass a .pt written by 'edgeseg train'")
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"'{path}': weight '{name}' holds NaN or inf; the checkpoint is broken: retrain or use an earlier one")


def checkpoint_recipe(ckpt: dict[str, Any]) -> Recipe:
    return recipe_from_dict(ckpt["recipe"])


def model_from_checkpoint(ckpt: dict[str, Any], output_stride: int | None = None) -> torch.nn.Module:
    """Rebuild the float or quantized model of a checkpoint, optionally at another output stride."""
    arch = dict(ckpt["arch"])
    model = build_model(
        num_classes=arch["num_classes"],
        output_stride=arch["output_stride"],
        width_mult=arch["width_mult"],
        head=arch["head"],
        aux_loss=arch["aux_loss"],
        multi_grid=arch.get("multi_grid"),
    )
    apply_atrous_rule(model, arch)
    if ckpt.get("quant"):
        model = restore_quantized(model, ckpt["quant"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise CheckpointError(
            f"checkpoint '{ckpt.get('path')}' does not match its architecture ({first[:160]}); it is corrupt or from another edgeseg"
        ) from None
    if output_stride is not None:
        set_output_stride(model, output_stride)
    return model


def apply_atrous_rule(model: DeepLab, arch: dict[str, Any]) -> None:
    """Give a model built for a checkpoint the dilation rule it was trained with."""
    if arch.get("atrous") != "exact":
        model.encoder.legacy_dilation = True
        model.set_output_stride(model.output_stride)


def set_output_stride(model: torch.nn.Module, output_stride: int) -> None:
    check_output_stride(output_stride, "--output-stride")
    model.set_output_stride(output_stride)


def check_compatible(ckpt: dict[str, Any], model: DeepLab, recipe: Recipe) -> None:
    """Refuse to resume or fine-tune from a checkpoint of another architecture or class count."""
    want = arch_of(model, recipe)
    have = ckpt["arch"]
    for key in ("num_classes", "width_mult", "head"):
        if have.get(key) != want[key]:
            raise CheckpointError(
                f"checkpoint '{ckpt.get('path')}' has {key}={have.get(key)} but the recipe builds {key}={want[key]}; "
                "use a checkpoint of the same architecture or change the recipe"
            )


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
