"""Evaluation of a torch model on a data set split, through the shared confusion matrix."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch.nn import functional as F

from edgeseg.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype on `device`: bf16 (CPU, and GPUs from Ampere on), else fp16.

    bf16 has float32's exponent range, so its gradients cannot underflow and need no loss
    scaling; fp16 (pre-Ampere GPUs) trains with a GradScaler (see Trainer.run).
    """
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):  # noqa: ANN201
    """bf16 autocast (fp16 on GPUs without bf16); a no-op when disabled."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,  # noqa: ANN001 - a SegDataset
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    errors: bool = False,
) -> dict:
    """mIoU, pixel accuracy and per-class IoU of `model` over `dataset` (batch 1, full size);
    `errors`: also per-class recall/precision, what each class is confused with and the confusion
    counts (ConfusionMatrix.errors).

    Logits are resized to the mask's size before argmax, so a resized eval input is still scored
    at the original resolution.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    classes = dataset.classes
    cm = ConfusionMatrix(classes.num_classes, classes.ignore_index)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        image, mask = dataset[i]
        with autocast(device, amp):
            logits = model(image[None].to(device))
        logits = logits.float()
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1)[0].cpu(), mask)
        if progress:
            progress(i + 1, n)
    model.train(was_training)
    return {**cm.summary(classes.names), **(cm.errors(classes.names) if errors else {})}


@torch.no_grad()
def recalibrate_bn(
    model: torch.nn.Module,
    dataset,  # noqa: ANN001
    num_images: int,
    device: torch.device | str = "cpu",
    keep: torch.nn.Module | None = None,
) -> None:
    """Re-estimate BatchNorm running statistics on full-size images (cumulative average).

    The first `num_images` images (an even number of them: they go in pairs) are used; with
    fewer than two the statistics are left as they are. BatchNorm layers inside `keep` (a frozen
    backbone, `model.freeze_backbone_bn`) keep theirs: their statistics are part of the weights.
    """
    kept = {id(m) for m in keep.modules()} if keep is not None else set()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in kept]
    # Pairs of images: the ASPP pooling branch's BN sees 1x1 maps and needs a batch of two.
    n = min(num_images, len(dataset)) // 2 * 2
    if not bns or n < 2:
        if bns and num_images > 0:
            # Resetting the statistics with no batch to re-estimate them would leave mean 0, var 1.
            log.warning("BN recalibration needs at least 2 images (%d available); statistics kept", min(num_images, len(dataset)))
        return
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, n, 2):
        a, b = dataset[i][0], dataset[i + 1][0]
        batch = torch.stack([a, b]) if a.shape == b.shape else a[None].expand(2, -1, -1, -1)
        model(batch.to(device))
    for m, (mom, tr) in zip(bns, saved):
        m.momentum = mom
        m.train(tr)
    model.train(was_training)
