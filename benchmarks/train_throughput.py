"""Training throughput (img/s) of FP32 vs autocast vs channels_last vs both, side by side.

One training step is what `edgeseg train` runs: forward (with the aux head if the recipe has one),
the recipe's loss (class weights of `balanced` set to 1: their values do not change the work),
backward, SGD step. Inputs are random tensors at the recipe's crop size, so data loading is not
measured. The variants run interleaved (one step of each in turn, after a warm-up of each), so a
change in machine load affects them all alike; the table reports the median step time and the
ratio to the first variant. `--device cuda` measures on the GPU (autocast there is what `edgeseg
train` uses: bf16, or fp16 on GPUs without bf16; steps are synchronized).

With `--lever KEY=VALUE` (repeatable) the variants are the recipe as it trains and the recipe with
each override instead: what a training lever costs in time (a loss, a head).

    python benchmarks/train_throughput.py                          # recipes/camvid_mnv2_os16.yaml
    python benchmarks/train_throughput.py --crop 64x64 --iters 2   # a quick check
    python benchmarks/train_throughput.py --device cuda --batch 16 # on a GPU
    python benchmarks/train_throughput.py --lever train.loss=balanced --lever model.head=deeplabv3plus_s2
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeseg.config import Recipe, load_recipe
from edgeseg.data import classes as C
from edgeseg.sizes import parse_size
from edgeseg.train import amp_dtype, autocast, build_loss, freeze_backbone_bn, recipe_model, total_loss

REPO = Path(__file__).resolve().parents[1]
KNOWN_CLASSES = {"camvid": C.CAMVID, "voc": C.VOC, "cityscapes": C.CITYSCAPES, "synthetic": C.SYNTHETIC}


@dataclass
class Variant:
    name: str
    recipe: Recipe
    amp: bool  # autocast, in the dtype `edgeseg train` uses on the device
    channels_last: bool


def precision_variants(recipe: Recipe) -> list[Variant]:
    """FP32, autocast, channels_last and both, of one recipe."""
    return [
        Variant("fp32", recipe, False, False),
        Variant("autocast", recipe, True, False),
        Variant("channels_last", recipe, False, True),
        Variant("autocast + channels_last", recipe, True, True),
    ]


def lever_variants(path: Path, levers: list[str]) -> list[Variant]:
    """The recipe as it trains, then the recipe with each override (in its own amp/channels_last)."""
    recipes = [("recipe", load_recipe(path))] + [(lever, load_recipe(path, [lever])) for lever in levers]
    return [Variant(name, r, r.train.amp, r.train.channels_last) for name, r in recipes]


def _num_classes(recipe: Recipe) -> int:
    if recipe.num_classes:
        return recipe.num_classes
    if recipe.data.format in KNOWN_CLASSES:
        return KNOWN_CLASSES[recipe.data.format].num_classes
    from edgeseg.data.dataset import open_split

    return open_split(recipe, recipe.data.train_split).classes.num_classes


class Runner:
    """One variant: its own copy of the model and optimizer, one training step per call."""

    def __init__(self, variant: Variant, num_classes: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.variant = variant
        self.recipe = recipe = variant.recipe
        fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
        self.device = x.device
        torch.manual_seed(0)
        model = recipe_model(recipe, num_classes, backbone_weights=False)
        self.model = model.to(x.device, memory_format=fmt).train()
        if recipe.model.freeze_backbone_bn:
            freeze_backbone_bn(self.model)
        self.x, self.y = x.contiguous(memory_format=fmt), y
        t = recipe.train
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=t.momentum, weight_decay=t.weight_decay)
        weights = torch.ones(num_classes) if t.loss.startswith("balanced") else None
        self.loss = build_loss(t, weights)
        self.times: list[float] = []

    def step(self, timed: bool) -> None:
        start = time.perf_counter()
        with autocast(self.device, self.variant.amp):
            out = self.model(self.x)
        loss = total_loss(self.loss, out, self.y, self.recipe.train.aux_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.variant.name}: loss is {loss.item()}")
        if timed:
            self.times.append(time.perf_counter() - start)


def measure(variants: list[Variant], crop: tuple[int, int], batch: int, warmup: int, iters: int, device: str = "cpu") -> list[dict]:
    """Median step time and img/s of each variant, measured interleaved; ratios to the first."""
    torch.manual_seed(0)
    n = _num_classes(variants[0].recipe)
    x = torch.randn(batch, 3, *crop, device=device)
    y = torch.randint(0, n, (batch, *crop), device=device)
    runners = [Runner(v, n, x, y) for v in variants]
    for r in runners:
        for _ in range(warmup):
            r.step(timed=False)
    for _ in range(iters):
        for r in runners:
            r.step(timed=True)
    base = statistics.median(runners[0].times)
    rows = []
    for r in runners:
        med = statistics.median(r.times)
        rows.append({"variant": r.variant.name, "median_step_s": med, "img_per_s": batch / med, "speedup": base / med,
                     "min_step_s": min(r.times), "max_step_s": max(r.times)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "camvid_mnv2_os16.yaml")
    parser.add_argument("--crop", help="HxW (default: the recipe's data.crop_size)")
    parser.add_argument("--batch", type=int, help="images per step (default: the recipe's train.batch_size)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train (default: cpu)")
    parser.add_argument("--lever", action="append", default=[], metavar="KEY=VALUE",
                        help="compare the recipe with this override instead of the precision variants (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    crop = parse_size(args.crop) if args.crop else tuple(recipe.data.crop_size)
    batch = args.batch or recipe.train.batch_size
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU; use --device cpu")
    variants = lever_variants(args.recipe, args.lever) if args.lever else precision_variants(recipe)
    rows = measure(variants, crop, batch, args.warmup, args.iters, args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    amp = str(amp_dtype(torch.device(args.device))).removeprefix("torch.")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training throughput: {recipe.name}, width {recipe.model.width_mult}, crop {crop[0]}x{crop[1]}, batch {batch}, "
                        f"{where}, autocast {amp}, median of {args.iters}")  # fmt: skip
    for col in ("variant", "step (s)", "img/s", f"vs {variants[0].name}"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["variant"], f"{r['median_step_s']:.3f}", f"{r['img_per_s']:.2f}", f"{r['speedup']:.2f}x")
    Console().print(table)
    if args.json:
        from edgeseg.fsutil import write_json

        write_json(args.json, {"recipe": str(args.recipe), "crop": list(crop), "batch": batch, "device": where, "autocast": amp, "threads": torch.get_num_threads(), "baseline": variants[0].name,
                               "torch": torch.__version__, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
