"""Training: `fit` runs the FP32 stage, then QAT when the recipe's quant section enables it.

train/ is the top layer (train -> quant -> models -> data): it owns checkpoints, so whatever
reads or writes them lives here: the QAT stage (qat), `edgeseg calibrate` (ptq) and `edgeseg
info` (info); launch runs a data-parallel training under torchrun.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from edgeseg.config import Recipe
from edgeseg.data.dataset import eval_dataset, train_dataset, val_is_held_out
from edgeseg.errors import CheckpointError, ConfigError
from edgeseg.fsutil import check_writable, copy_file, write_json
from edgeseg.models import build_model
from edgeseg.train.checkpoint import apply_atrous_rule, check_compatible, load_checkpoint, model_from_checkpoint, read_payload
from edgeseg.train.evaluate import amp_dtype, autocast
from edgeseg.train.info import model_info
from edgeseg.train.loop import Callback, Stage, Trainer, freeze_backbone_bn
from edgeseg.train.losses import build_loss, class_weights_for, total_loss
from edgeseg.train.ptq import calibrate_checkpoint
from edgeseg.train.qat import qat_stage
from edgeseg.train.run_folder import claim_run_folder, finish_run_folder, run_lock

__all__ = [
    "Callback",
    "Stage",
    "Trainer",
    "amp_dtype",
    "autocast",
    "build_loss",
    "calibrate_checkpoint",
    "fit",
    "freeze_backbone_bn",
    "model_info",
    "qat_stage",
    "recipe_model",
    "total_loss",
]

log = logging.getLogger(__name__)


def _device(want: str = "auto") -> torch.device:
    """The device a run trains on: recipe train.device (auto picks CUDA where there is a GPU)."""
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but PyTorch sees no CUDA GPU; use train.device=auto or cpu")
    if want != "cpu" and torch.cuda.is_available():
        index, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"process {index} has no GPU of its own: this machine has {count}; use --nproc-per-node {count} or fewer")
        torch.cuda.set_device(index)  # NCCL collectives use the current device
        return torch.device("cuda", index)
    return torch.device("cpu")


def _init_distributed(device: torch.device) -> None:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def fit(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    qat: bool | None = None,
    init: str | Path | None = None,
    callback: Callback | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train a recipe into `out_dir`: fp32.pt, qat.pt (with QAT), best.pt (the final model), last.pt.

    Args:
        recipe: validated recipe.
        out_dir: run folder (created).
        resume: continue exactly from out_dir/last.pt.
        qat: force QAT on (True) or off (False); None follows recipe.quant.enabled.
        init: start QAT from this FP32 checkpoint instead of training FP32 first.
        callback: progress events for the CLI: start/step/eval/end.
        force: train into a folder that holds another recipe's run (its files are overwritten).

    Raises:
        ConfigError: the folder is busy (another edgeseg holds its lock), holds another recipe's
            run (without `force`), `resume` of a run that already finished, or `init` without QAT.
    """
    if init is not None and not (recipe.quant.enabled if qat is None else qat):
        # --init skips the FP32 stage; without QAT there would be nothing left to train.
        raise ConfigError(f"--init '{init}' starts the QAT stage from that FP32 checkpoint, but QAT is off; add --qat or leave --init out")
    device = _device(recipe.train.device)
    _init_distributed(device)
    out = check_writable(out_dir)
    with run_lock(out):
        claim_run_folder(out, recipe, resume=resume, force=force)
        with _deterministic(recipe.train.deterministic, device):
            results = _fit(recipe, out, device, resume=resume, qat=qat, init=init, callback=callback)
        finish_run_folder(out, recipe)
    return results


@contextmanager
def _deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """torch's deterministic-algorithms switch for one run, restored after it (it is process-wide)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled and device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; cross-entropy and bilinear
        # upsampling have no deterministic CUDA kernels (atomic adds), so on a GPU they warn,
        # not fail, and bit-exact resume holds on the CPU only.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        log.warning(
            "train.deterministic on CUDA: cross-entropy and upsampling are not deterministic there; runs may differ in the last bits"
        )
    elif enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _fit(
    recipe: Recipe,
    out: Path,
    device: torch.device,
    *,
    resume: bool,
    qat: bool | None,
    init: str | Path | None,
    callback: Callback | None,
) -> dict[str, Any]:
    torch.manual_seed(recipe.train.seed)
    train_set, val_set = train_dataset(recipe), eval_dataset(recipe)
    model = recipe_model(recipe, train_set.classes.num_classes)
    trainer = Trainer(recipe, out, train_set, val_set, device, callback, class_weights_for(recipe.train, train_set.source))
    if not val_is_held_out(recipe):
        log.warning(
            "data.train_splits includes the val split '%s': the model trains on it, so its val mIoU is not an honest figure "
            "and the final weights (not the best on val) are kept",
            recipe.data.val_split,
        )
    do_qat = recipe.quant.enabled if qat is None else qat
    results: dict[str, Any] = {}
    model, last, fp32_done = _starting_point(recipe, out, model, resume=resume, init=init)
    if not fp32_done:
        if last is not None:
            model.load_state_dict(last["model"])
        stage = Stage("fp32", model, recipe.train.epochs, recipe.train.lr, recipe.train.max_iters)
        results["fp32"] = trainer.run(stage, resume=last)
        last = None
        if trainer.rank == 0:
            _finish_stage(out, "fp32")
    if do_qat:
        fp32 = load_checkpoint(init or out / "fp32.pt")
        stage, qat_resume = qat_stage(recipe, fp32, last, train_set, device)
        results["qat"] = trainer.run(stage, resume=qat_resume)
    if trainer.rank == 0:
        _write_summary(recipe, out, "qat.pt" if do_qat else "fp32.pt", results)
    if dist.is_initialized():
        dist.barrier()
    return results


def recipe_model(recipe: Recipe, num_classes: int, *, backbone_weights: bool = True) -> nn.Module:
    """The recipe's float model for the data's classes (which must match recipe num_classes).

    backbone_weights=False leaves the backbone randomly initialised (a throughput benchmark needs
    the architecture, not the ImageNet file).
    """
    model = build_model(
        num_classes=num_classes,
        output_stride=recipe.model.output_stride,
        width_mult=recipe.model.width_mult,
        head=recipe.model.head,
        aux_loss=recipe.model.aux_loss,
        multi_grid=recipe.model.multi_grid,
        backbone_weights=recipe.model.backbone_weights if backbone_weights else None,
    )
    if recipe.num_classes is not None and recipe.num_classes != num_classes:
        raise CheckpointError(f"recipe num_classes={recipe.num_classes} but the data has {num_classes} classes; fix num_classes")
    return model


def _starting_point(
    recipe: Recipe, out: Path, model: nn.Module, *, resume: bool, init: str | Path | None
) -> tuple[nn.Module, dict[str, Any] | None, bool]:
    """(model, last.pt to resume from or None, whether the FP32 stage is already done)."""
    last = load_checkpoint(out / "last.pt") if resume and (out / "last.pt").exists() else None
    if resume and last is None:
        raise CheckpointError(f"--resume: '{out / 'last.pt'}' does not exist; run without --resume to start")
    if last is not None:
        check_compatible(last, model, recipe)
        apply_atrous_rule(model, last["arch"])
    fp32_done = last is not None and (last.get("stage") == "qat" or last.get("stage_done"))
    if init is not None:
        src = load_checkpoint(init)
        check_compatible(src, model, recipe)
        model = model_from_checkpoint(src)
        fp32_done = True
    return model, last, bool(fp32_done)


def _write_summary(recipe: Recipe, out: Path, final: str, results: dict[str, Any]) -> None:
    """best.pt (a copy of the final stage's checkpoint) and summary.json."""
    copy_file(out / final, out / "best.pt")
    honest = val_is_held_out(recipe)
    write_json(out / "summary.json", {"recipe": recipe.name, "best": final, "val_held_out": honest, **results})


def _finish_stage(out: Path, name: str) -> None:
    """Mark last.pt as the end of a stage, so --resume goes on to the next stage."""
    ckpt = read_payload(out / "last.pt")
    ckpt["stage_done"] = name
    import io

    from edgeseg.fsutil import write_bytes

    buf = io.BytesIO()
    torch.save(ckpt, buf)
    write_bytes(out / "last.pt", buf.getvalue())
