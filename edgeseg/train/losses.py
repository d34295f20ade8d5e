"""Segmentation losses chosen by the recipe's `train.loss`, composable with the auxiliary head.

- `ce`: cross-entropy over labelled pixels.
- `ohem`: online hard-example mining (as the strongest Cityscapes/CamVid recipes train): pixels
  whose true-class probability is above `ohem_thresh` are dropped, but at least `ohem_min_kept`
  of the hardest pixels of the batch are always kept.
- `balanced`: cross-entropy with median-frequency class weights (SegNet's balancing), computed
  once from the training masks; `class_weight_power` < 1 softens them (0.5 = square root).
- `lovasz`: the Lovász-softmax surrogate of the per-class Jaccard loss (Berman et al., 2018).
- `<base>+lovasz`: `base + lovasz_weight * lovasz`, for any base above.

The same loss is applied to the main and the auxiliary logits: `main + aux_weight * aux`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from edgeseg.config import BASE_LOSSES, LOSSES
from edgeseg.data.classes import IGNORE_INDEX

log = logging.getLogger(__name__)

__all__ = ["BASE_LOSSES", "LOSSES", "build_loss", "lovasz_softmax", "median_frequency_weights", "ohem_cross_entropy", "total_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels (weighted mean when `weight` is given).

    A batch with no labelled pixel gives 0 (torch's mean over nothing is NaN, which would stop
    training as a numerical error).
    """
    if not bool((target != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight, ignore_index=IGNORE_INDEX)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """Cross-entropy over the hard pixels only.

    A pixel is hard when its true-class probability is below `thresh`. When fewer than
    `min_kept` pixels are hard, the threshold rises to the probability of the `min_kept`-th
    hardest pixel, so exactly the `min_kept` hardest pixels (ties aside) are kept.
    """
    logits = logits.float()
    pixel_loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none").flatten()
    valid = target.flatten() != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0  # a batch with no labelled pixel: no gradient, no NaN
    # p(true class) = exp(-CE); computed without building the full softmax a second time.
    prob = torch.exp(-pixel_loss.detach())[valid]
    losses = pixel_loss[valid]
    threshold = torch.tensor(thresh, dtype=prob.dtype, device=prob.device)
    if min_kept > 0:
        k = min(min_kept, prob.numel())
        kth = torch.kthvalue(prob, k).values
        threshold = torch.maximum(threshold, kth)
    keep = prob <= threshold if min_kept > 0 else prob < threshold
    if not bool(keep.any()):
        return losses.sum() * 0.0
    return losses[keep].mean()


LOVASZ_BLOCK = 1 << 25  # elements per (classes, pixels) block of lovasz_softmax: 128 MB of float32


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Alg. 1 of the
    paper), for each row of `fg_sorted` (one class's foreground indicator, in error order)."""
    gts = fg_sorted.sum(-1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-1)
    union = gts + (1.0 - fg_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax over the labelled pixels of the batch, averaged over the classes present.

    0 for a perfect (one-hot) prediction; bounded by 1.
    """
    probs = logits.float().softmax(1)
    c = probs.shape[1]
    probs = probs.permute(0, 2, 3, 1).reshape(-1, c)
    labels = target.flatten()
    valid = labels != IGNORE_INDEX
    probs, labels = probs[valid], labels[valid]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    # The present classes a block at a time: one (classes, pixels) sort per block, which the CPU
    # runs a row per thread (one 1-D sort per class took 1.18 s for this loss at 8x288x384 on two
    # threads, the batched sort 0.83 s); blocks bound the memory to about LOVASZ_BLOCK elements
    # per tensor (a Cityscapes batch of 16 at 768x768 would otherwise hold 19 x 9.4 M of each).
    present = labels.unique()
    rows = max(1, LOVASZ_BLOCK // labels.numel())
    total = probs.new_zeros(())
    for start in range(0, present.numel(), rows):
        cls = present[start : start + rows]
        fg = (labels.unsqueeze(0) == cls.unsqueeze(1)).float()
        errors = (fg - probs[:, cls].t()).abs()
        errors_sorted, order = torch.sort(errors, dim=1, descending=True)
        total = total + (errors_sorted * _lovasz_grad(torch.gather(fg, 1, order))).sum()
    return total / present.numel()


def median_frequency_weights(pixels: torch.Tensor, image_pixels: torch.Tensor, power: float = 1.0, max_weight: float = 0.0) -> torch.Tensor:
    """Median-frequency class weights (Eigen & Fergus; SegNet): w_c = (median(f) / f_c) ** power.

    Args:
        pixels: labelled pixels of each class over the training masks.
        image_pixels: total labelled pixels of the images in which each class appears.
        power: 1.0 is the classic rule; 0.5 its square root (softer on large classes).
        max_weight: clip weights above this (0: no clip).

    A class absent from every mask gets weight 0 (it cannot be learnt, and must not be NaN).
    """
    pixels, image_pixels = pixels.double(), image_pixels.double()
    present = pixels > 0
    freq = torch.zeros_like(pixels)
    freq[present] = pixels[present] / image_pixels[present]
    weights = torch.zeros_like(pixels)
    if bool(present.any()):
        median = freq[present].quantile(0.5)  # the midpoint for an even count, as numpy's median
        weights[present] = (median / freq[present]) ** power
    if max_weight > 0:
        weights = weights.clamp(max=max_weight)
    return weights.float()


def class_weights_for(train_cfg: Any, source: Any) -> torch.Tensor | None:
    """The `balanced` loss's class weights from the training masks (cached); None for other losses."""
    if train_cfg.loss.partition("+")[0] != "balanced":
        return None
    from edgeseg.data.stats import class_pixel_counts

    pixels, image_pixels = class_pixel_counts(source)
    weights = median_frequency_weights(
        torch.from_numpy(pixels), torch.from_numpy(image_pixels), train_cfg.class_weight_power, train_cfg.class_weight_max
    )
    names = source.classes.names
    log.warning("balanced loss, class weights: %s", ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights.tolist())))
    return weights


def build_loss(train_cfg: Any, class_weights: torch.Tensor | None = None) -> LossFn:
    """The loss of a recipe's train section: a function (logits, target) -> scalar.

    Args:
        train_cfg: the recipe's `train` section (loss, ohem_thresh, ohem_min_kept, lovasz_weight).
        class_weights: per-class weights for `balanced` (see `class_weights_for`).
    """
    name: str = train_cfg.loss
    base, _, extra = name.partition("+")
    if base == "balanced" and class_weights is None:
        raise ValueError("loss 'balanced' needs class_weights")  # a programming error, not user input

    def base_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if base == "ohem":
            return ohem_cross_entropy(logits, target, train_cfg.ohem_thresh, train_cfg.ohem_min_kept)
        if base == "balanced":
            assert class_weights is not None
            return cross_entropy(logits, target, class_weights.to(logits.device))
        if base == "lovasz":
            return lovasz_softmax(logits, target)
        return cross_entropy(logits, target)

    if extra != "lovasz":
        return base_loss
    weight = float(train_cfg.lovasz_weight)

    def with_lovasz(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return base_loss(logits, target) + weight * lovasz_softmax(logits, target)

    return with_lovasz


def total_loss(
    loss_fn: LossFn, out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor, aux_weight: float
) -> torch.Tensor:
    """The loss of a model output: main logits, plus `aux_weight` times the auxiliary head's."""
    if isinstance(out, tuple):
        main, aux = out
        return loss_fn(main, target) + aux_weight * loss_fn(aux, target)
    return loss_fn(out, target)
