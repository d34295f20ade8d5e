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


LOVASZ_BLOCK = 1 << 25  # elements per (batch, classes, pixels) block of lovasz_softmax: 128 MB of float32
LOVASZ_BINS = 4096  # error bins of lovasz_softmax: its loss is within 2 / LOVASZ_BINS of the sorted algorithm's


def _lovasz_signed_weights(p: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Lovász-softmax gradient of each pixel's probability, without a sort.

    `p` (batch, classes, pixels) holds the probabilities of some classes, `fg` whether each pixel
    is of that class, `valid` (batch, 1, pixels) which pixels are labelled. The paper's Algorithm 1
    sorts the errors |fg - p| and weighs each by the step of the Jaccard loss it causes, which
    depends only on how many foreground and background pixels come before it. Here the errors fall
    in LOVASZ_BINS equal bins, counted by one bincount per class; a bin's step of the Jaccard loss
    is exact, and within it foreground and background pixels are taken as evenly interleaved, so
    each kind gets the mean of the steps its pixels make (closed form: J = 1 - I/U along the
    bin, I falling by its foreground count, U growing by its background count). Where no two errors
    share a bin this is the sorted algorithm's gradient; the loss is within 2 / LOVASZ_BINS of it
    (weights are non-negative and sum to each bin's step). Errors that tie exactly, which float32
    probabilities produce by the thousand in a batch, get one mean weight instead of the sort's
    arbitrary order: any mix is a subgradient of the Lovász extension there.

    Returns `(signed, const)` with `loss = (p * signed).sum() + const`: `signed` is +w for
    background pixels, -w for foreground ones (their error is 1 - p) and 0 for void ones.
    """
    k, bins = p.shape[1], LOVASZ_BINS
    errors = torch.where(fg, 1.0 - p, p)
    key = (bins - 1) - (errors * bins).to(torch.int32).clamp_(0, bins - 1)  # 0: the largest errors
    key += (torch.arange(k, dtype=torch.int32, device=p.device) * bins).view(1, k, 1)
    key = torch.where(valid, key * 2 + fg, 2 * k * bins)  # void pixels: a last bin of weight 0
    hist = torch.bincount(key.flatten(), minlength=2 * k * bins + 1)[:-1].view(k, bins, 2).double()
    bg, fgn = hist[..., 0], hist[..., 1]
    gts = fgn.sum(1, keepdim=True)
    inter_after, union_after = gts - fgn.cumsum(1), gts + bg.cumsum(1)
    inter_before, union_before = inter_after + fgn, union_after - bg
    step = inter_before / union_before - inter_after / union_after  # the bin's Jaccard step
    # foreground share of the step: integral of fgn / U(t) for U(t) = U0 + bg t, t in [0, 1]
    fg_step = fgn * torch.where(bg > 0, torch.log1p(bg / union_before) / bg.clamp(min=1), 1.0 / union_before)
    fg_w = fg_step / fgn.clamp(min=1)
    weights = torch.stack([(step - fg_step) / bg.clamp(min=1), -fg_w], -1).flatten()
    const = (fg_w * fgn).sum().float()
    signed = torch.cat([weights, weights.new_zeros(1)]).float()[key]
    return signed, const


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax over the labelled pixels of the batch, averaged over the classes present.

    0 for a perfect (one-hot) prediction; bounded by 1. Linear in the pixels (see
    `_lovasz_signed_weights`): at 8x288x384 with 11 classes on two threads, forward and backward
    take 0.28 s against the sorted algorithm's 1.06 s (one (classes, pixels) sort): 3.7x faster
    (docs/camvid/lovasz_speed_cpu.json).
    """
    b, c = logits.shape[:2]
    probs = logits.float().softmax(1).flatten(2)
    labels = target.reshape(b, 1, -1)
    valid = labels != IGNORE_INDEX
    present = labels[valid].unique()
    if present.numel() == 0:
        return logits.sum() * 0.0
    # The present classes a block at a time, to bound the memory to about LOVASZ_BLOCK elements
    # per tensor (a Cityscapes batch of 16 at 768x768 would otherwise hold 19 x 9.4 M of each).
    rows = max(1, LOVASZ_BLOCK // labels.numel())
    total = probs.new_zeros(())
    for start in range(0, present.numel(), rows):
        cls = present[start : start + rows]
        p = probs if cls.numel() == c else probs.index_select(1, cls)
        with torch.no_grad():
            signed, const = _lovasz_signed_weights(p, labels == cls.view(1, -1, 1), valid)
        total = total + (p * signed).sum() + const
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
