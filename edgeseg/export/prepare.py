"""Shared export preparation: checkpoint -> eval-mode torch model at a fixed size + base meta."""

from __future__ import annotations

import platform
from typing import Any

import torch

from edgeseg import __version__
from edgeseg.config import recipe_from_dict
from edgeseg.export.base import ExportRequest
from edgeseg.export.meta import META_SCHEMA_VERSION
from edgeseg.train.checkpoint import file_hash, load_checkpoint, model_from_checkpoint


def tool_versions(*modules: str) -> dict[str, str]:
    """Versions of edgeseg, python and the given importable modules (those installed)."""
    import importlib

    out = {"edgeseg": __version__, "python": platform.python_version()}
    for name in modules:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:  # noqa: BLE001 - a missing or broken SDK is just not listed
            continue
    return out


def load_for_export(request: ExportRequest) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Load the request's checkpoint as an eval-mode model with static resize sizes.

    Returns (model, ckpt, meta) where meta holds every ArtifactMeta field except target,
    precision, model_file, input_name/output_name and tool_versions (the target fills those).
    With --keep-float/--max-drop in the request's options, the chosen layers are float in the
    model and listed in meta (edgeseg.export.mixed.apply).
    """
    ckpt = load_checkpoint(request.checkpoint)
    recipe = recipe_from_dict(ckpt["recipe"])
    model = model_from_checkpoint(ckpt, request.output_stride)
    size = request.input_size or tuple(recipe.export.input_size or recipe.data.eval_size or recipe.data.crop_size)
    model.set_input_size(size)
    model.eval()
    d = recipe.data
    meta = {
        "schema_version": META_SCHEMA_VERSION,
        "input_size": [int(size[0]), int(size[1])],
        "output_stride": model.output_stride,
        "classes": ckpt["classes"],
        "normalization": ckpt["normalization"],
        "data": {
            "format": d.format,
            "root": d.root,
            "split": d.val_split,
            "synthetic": {
                "num_train": d.synthetic_num_train,
                "num_val": d.synthetic_num_val,
                "size": list(d.synthetic_size),
                "seed": d.synthetic_seed,
            },
        },
        "quant": ckpt.get("quant_meta"),
        "source_checkpoint": str(request.checkpoint),
        "source_checkpoint_sha256": file_hash(request.checkpoint),
        "recipe_hash": ckpt.get("recipe_hash"),
        "recipe_name": recipe.name,
    }
    from edgeseg.export.mixed import apply

    apply(model, request, meta)  # --keep-float/--max-drop: those layers float, recorded in meta
    return model, ckpt, meta
