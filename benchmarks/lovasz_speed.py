"""Lovász-softmax: edgeseg's histogram form against the sorted algorithm, speed and agreement.

The paper's Algorithm 1 (Berman et al., 2018) sorts each class's errors; `edgeseg.train.losses`
counts them in `LOVASZ_BINS` bins instead (see `_lovasz_signed_weights`). This times forward +
backward of both on one batch of the recipe's shape (interleaved, median of `--iters`) and prints
how far apart their losses and gradients are. The sorted algorithm here is the one edgeseg trained
with until the histogram replaced it: one (classes, pixels) sort per block of classes.

The logits look like a half-trained model's (the true class raised by `--margin` over unit-normal
noise, on labels in blocks of 16x16 pixels with a void border), so errors tie as they do in
training: float32 probabilities near 0 and 1 repeat by the thousand in a batch.

    python benchmarks/lovasz_speed.py                       # batch 8, 11 classes, 288x384
    python benchmarks/lovasz_speed.py --shape 2x11x64x64 --iters 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from edgeseg.data.classes import IGNORE_INDEX
from edgeseg.train import losses


def lovasz_sorted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax by Algorithm 1: per class present, errors sorted, each weighed by its Jaccard step."""
    c = logits.shape[1]
    probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, c)
    labels = target.flatten()
    valid = labels != IGNORE_INDEX
    probs, labels = probs[valid], labels[valid]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    present = labels.unique()
    fg = (labels.unsqueeze(0) == present.unsqueeze(1)).float()
    errors = (fg - probs[:, present].t()).abs()
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    fg_sorted = torch.gather(fg, 1, order)
    gts = fg_sorted.sum(1, keepdim=True)
    jaccard = 1.0 - (gts - fg_sorted.cumsum(1)) / (gts + (1.0 - fg_sorted).cumsum(1))
    steps = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (errors_sorted * steps).sum() / present.numel()


def batch(shape: tuple[int, int, int, int], margin: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a half-trained model (see the module's docstring)."""
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, c, (n, 1, -(-h // 16), -(-w // 16)), generator=gen).float()
    target = F.interpolate(blocks, scale_factor=16, mode="nearest")[:, 0, :h, :w].long()
    target[:, :4] = IGNORE_INDEX
    logits = torch.randn(shape, generator=gen) + margin * F.one_hot(target.clamp(max=c - 1), c).permute(0, 3, 1, 2)
    return logits, target


def compare(shape: tuple[int, int, int, int], margin: float, warmup: int, iters: int) -> dict:
    logits, target = batch(shape, margin)
    logits.requires_grad_(True)
    fns = {"sorted": lovasz_sorted, "histogram": losses.lovasz_softmax}
    values, grads = {}, {}
    for name, fn in fns.items():
        loss = fn(logits, target)
        (grads[name],) = torch.autograd.grad(loss, logits)
        values[name] = loss.item()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(logits, target).backward()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
            logits.grad = None
    sorted_s, hist_s = statistics.median(times["sorted"]), statistics.median(times["histogram"])
    g_s, g_h = grads["sorted"], grads["histogram"]
    return {
        "shape": list(shape), "margin": margin, "bins": losses.LOVASZ_BINS, "threads": torch.get_num_threads(), "iters": iters,
        "loss_sorted": values["sorted"], "loss_histogram": values["histogram"],
        "loss_abs_diff": abs(values["sorted"] - values["histogram"]), "loss_bound": 2 / losses.LOVASZ_BINS,
        "grad_rel_diff": (g_s - g_h).norm().item() / g_s.norm().item(),
        "grad_cosine": F.cosine_similarity(g_s.flatten().double(), g_h.flatten().double(), dim=0).item(),
        "sorted_s": sorted_s, "histogram_s": hist_s, "speedup": sorted_s / hist_s,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="8x11x288x384", help="NxCxHxW of the logits (default: CamVid recipe's batch)")
    parser.add_argument("--margin", type=float, default=4.0, help="true-class logit margin over unit noise")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    try:
        shape = tuple(int(v) for v in args.shape.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1 or shape[1] < 2:
        parser.error(f"--shape {args.shape!r}: use NxCxHxW with positive sizes and at least 2 classes, e.g. 8x11x288x384")
    if args.threads:
        torch.set_num_threads(args.threads)
    r = compare(shape, args.margin, args.warmup, args.iters)  # type: ignore[arg-type]
    print(f"Lovász-softmax forward + backward at {args.shape}, {r['threads']} threads, median of {args.iters} (interleaved)")
    print(f"  sorted    {r['sorted_s']:.3f} s   loss {r['loss_sorted']:.6f}")
    print(f"  histogram {r['histogram_s']:.3f} s   loss {r['loss_histogram']:.6f}   {r['speedup']:.2f}x faster")
    print(f"  |loss difference| {r['loss_abs_diff']:.2e} (bound 2/{r['bins']} = {r['loss_bound']:.2e}); "
          f"gradient: relative difference {r['grad_rel_diff']:.4f}, cosine {r['grad_cosine']:.6f}")  # fmt: skip
    if args.json:
        from edgeseg.fsutil import write_json

        write_json(args.json, {**r, "torch": torch.__version__})


if __name__ == "__main__":
    main()
