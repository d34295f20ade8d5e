"""The QAT stage of `edgeseg train`: calibrate the FP32 checkpoint, then fine-tune it quantized.

BatchNorm is folded before quantization, so its statistics are frozen from the start of QAT
(the folded weights train, as deployed). Activation ranges come from calibration; with
`quant.freeze_ranges_epoch: K` they follow the training batches (moving average of max |x|)
for the first K epochs and are frozen after; by default (null) they stay frozen throughout,
as in NVIDIA's QAT recipe.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from edgeseg.config import Recipe
from edgeseg.quant import calibrate_recipe, quant_state, set_range_tracking
from edgeseg.train.checkpoint import model_from_checkpoint
from edgeseg.train.loop import Stage

log = logging.getLogger(__name__)


def _calibrated(recipe: Recipe, fp32_ckpt: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to fine-tune and its quant_meta: a calibrated PTQ checkpoint is used as it is."""
    if fp32_ckpt.get("quant"):
        log.info("QAT starts from the calibrated checkpoint %s", fp32_ckpt.get("path"))
        meta = dict(fp32_ckpt.get("quant_meta") or {})
        return model_from_checkpoint(fp32_ckpt), meta
    model = model_from_checkpoint(fp32_ckpt).to(device)
    qmodel, meta, _ = calibrate_recipe(model, recipe, device=device)  # the recipe's method, list and images
    return qmodel, meta


def qat_stage(
    recipe: Recipe,
    fp32_ckpt: dict[str, Any],
    last: dict[str, Any] | None,
    train_set: Any,
    device: torch.device,
) -> tuple[Stage, dict[str, Any] | None]:
    """Build the QAT stage of a run.

    Args:
        recipe: the run's recipe (its `quant` section: epochs, lr, calibration, freeze_ranges_epoch).
        fp32_ckpt: the FP32 checkpoint to start from (or a calibrated PTQ checkpoint).
        last: the run's last.pt when resuming; a QAT one (stage "qat") is continued exactly.
        train_set: the training data set (unused here: calibration reads images itself).
        device: where calibration runs.

    Returns:
        (stage, resume): the Stage for Trainer.run and the last.pt dict to resume from, or None.
    """
    del train_set  # calibration uses the eval preprocessing, not the training transform
    q = recipe.quant
    resume = last if last is not None and last.get("stage") == "qat" else None
    if resume is not None:
        qmodel = model_from_checkpoint(resume)  # restore_quantized + a strict load of its state
        meta = dict(resume.get("quant_meta") or {})
    else:
        qmodel, meta = _calibrated(recipe, fp32_ckpt, device)
    meta["qat"] = True
    meta.setdefault("method", q.calib_method)

    def on_epoch_start(epoch: int) -> None:
        track = q.freeze_ranges_epoch is not None and epoch < q.freeze_ranges_epoch
        set_range_tracking(qmodel, track)

    def extra_state() -> dict[str, Any]:
        return {"quant": quant_state(qmodel), "quant_meta": dict(meta)}

    stage = Stage("qat", qmodel, q.epochs, q.lr, q.max_iters, extra_state=extra_state, on_epoch_start=on_epoch_start)
    return stage, resume
