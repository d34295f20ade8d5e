"""The training loop: SGD + poly LR with warmup, bf16/fp16 autocast, exact resume, DDP.

Every random draw of an iteration (sample order, augmentation, dropout) is a function of
(seed, epoch, iteration), so a run resumed from any saved iteration ends with the same weights
as an uninterrupted one (in deterministic mode).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from edgeseg.config import Recipe
from edgeseg.data.dataset import val_is_held_out
from edgeseg.errors import Interrupted, NumericalError
from edgeseg.fsutil import append_text
from edgeseg.train.checkpoint import save_checkpoint
from edgeseg.train.ema import WeightEMA
from edgeseg.train.evaluate import amp_dtype, autocast, evaluate, recalibrate_bn
from edgeseg.train.guards import Buffers, non_finite, weights_digest
from edgeseg.train.losses import build_loss, total_loss
from edgeseg.train.sampling import SeededDataset, SeededSampler, mix_seeds

log = logging.getLogger(__name__)
Callback = Callable[..., None]


@dataclass
class _RunState:
    """What one stage's loop carries from step to step."""

    stage: Stage
    model: nn.Module
    opt: torch.optim.Optimizer
    sampler: SeededSampler
    ipe: int
    total: int
    ddp: nn.Module  # the model as called in training (DistributedDataParallel across processes)
    buffers: Buffers
    ema: WeightEMA | None = None
    resumed: bool = False
    start_it: int = 0
    it: int = 0
    best: float = -1.0
    last_miou: float = float("nan")

    @property
    def final_model(self) -> nn.Module:
        """The model the stage evaluates and saves: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class Stage:
    """One training stage (fp32 or qat) and what it writes."""

    name: str
    model: nn.Module
    epochs: int
    lr: float
    max_iters: int | None
    extra_state: Callable[[], dict[str, Any]] = field(default=lambda: {})
    on_epoch_start: Callable[[int], None] | None = None


def _param_groups(model: nn.Module, recipe: Recipe, lr: float) -> list[dict]:
    enc = {id(p) for p in model.encoder.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    backbone = [p for p in params if id(p) in enc]
    rest = [p for p in params if id(p) not in enc]
    return [
        {"params": backbone, "lr": lr * recipe.train.backbone_lr_mult, "lr_mult": recipe.train.backbone_lr_mult},
        {"params": rest, "lr": lr, "lr_mult": 1.0},
    ]


def poly_lr(base: float, it: int, total: int, warmup: int, power: float) -> float:
    """Linear warmup to `base`, then polynomial decay to 0 at `total`."""
    if warmup and it < warmup:
        return base * (it + 1) / warmup
    frac = (it - warmup) / max(1, total - warmup)
    return base * (1 - min(frac, 1.0)) ** power


def freeze_backbone_bn(model: nn.Module) -> None:
    """Put the encoder's BatchNorm layers in eval mode (running statistics and affine kept)."""
    for m in model.encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Trainer:
    """Runs stages of one recipe into one run folder; rank 0 writes all files."""

    def __init__(  # noqa: PLR0913
        self,
        recipe: Recipe,
        out_dir: Path,
        train_set,  # noqa: ANN001
        val_set,  # noqa: ANN001
        device: torch.device,
        callback: Callback | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        self.recipe, self.out, self.device = recipe, Path(out_dir), device
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # set per stage in run()
        self.train_set, self.val_set = train_set, val_set
        self.classes = train_set.classes
        self.callback = callback or (lambda *a, **k: None)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self._stop = False
        self.stop_signal = 0
        self.loss_fn = build_loss(recipe.train, class_weights)
        self.pick_best = val_is_held_out(recipe)

    def _emit(self, event: str, **info: Any) -> None:
        if self.rank == 0:
            self.callback(event, **info)

    def _loader(self, sampler: SeededSampler) -> DataLoader:
        t = self.recipe.train
        return DataLoader(
            SeededDataset(self.train_set),
            batch_size=t.batch_size,
            sampler=sampler,
            num_workers=self.recipe.data.num_workers,
            drop_last=True,
            persistent_workers=False,
        )

    def _log_row(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        path = self.out / "metrics.csv"
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=["stage", "epoch", "iter", "loss", "lr", "img_per_s", "val_miou", "time"])
        if not path.exists():
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in writer.fieldnames})
        append_text(path, buf.getvalue())  # a kill never leaves half a row
        if self._tb is not None:
            for key in ("loss", "lr", "img_per_s", "val_miou"):
                if row.get(key) not in (None, ""):
                    self._tb.add_scalar(f"{row['stage']}/{key}", row[key], row["iter"])

    def _open_tb(self) -> None:
        self._tb = None
        if self.rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tb"))
        except ImportError:
            log.info("tensorboard is not installed; metrics.csv only")

    def _evaluate(self, model: nn.Module) -> float:
        base = getattr(model, "module", model)
        if self.recipe.train.bn_recalibrate:
            # A frozen backbone's BN statistics are its weights' (the shared backbone has them folded
            # to identity): re-estimating them would change what every later layer sees.
            keep = base.encoder if self.recipe.model.freeze_backbone_bn else None
            recalibrate_bn(base, _EvalOnTrain(self.train_set, self.val_set), self.recipe.train.bn_recalibrate, self.device, keep=keep)
        summary = evaluate(base, self.val_set, device=self.device, amp=self.recipe.train.amp)
        return summary["miou"]

    def run(self, stage: Stage, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train one stage; returns {'best_miou', 'last_miou', 'iters'}. Resumes from a last.pt dict."""
        st = self._prepare(stage, resume)
        self._open_tb()
        self._emit("start", stage=stage.name, total=st.total, done=st.start_it, epochs=math.ceil(st.total / st.ipe))
        handlers = self._catch_signals()
        try:
            while st.it < st.total:
                self._epoch(st)
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            if self._tb is not None:
                self._tb.close()
        digests = self._agree_on_weights(st.model)
        self._emit("end", stage=stage.name, best=st.best)
        return {
            "best_miou": st.best,
            "last_miou": st.last_miou,
            "iters": st.it,
            "weights_sha256": digests[0],
            "rank_weights_sha256": digests,
            "val_held_out": self.pick_best,
            **({"ema": st.ema.decay} if st.ema is not None else {}),
        }

    def _prepare(self, stage: Stage, resume: dict[str, Any] | None) -> _RunState:
        """Model on its device, optimizer, sampler, loss scaler and EMA, restored from `resume`."""
        t, model = self.recipe.train, stage.model.to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(_param_groups(model, self.recipe, stage.lr), lr=stage.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        sampler = SeededSampler(len(self.train_set), t.batch_size, t.seed + (1000 if stage.name == "qat" else 0), self.rank, self.world)
        ipe = sampler.num_batches
        total = stage.epochs * ipe if stage.max_iters is None else min(stage.epochs * ipe, stage.max_iters)
        # Loss scaling only for fp16 autocast (GPUs without bf16): bf16 gradients cannot underflow.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp and amp_dtype(self.device) == torch.float16)
        # EMA in the float stage only: QAT fine-tunes the averaged weights for a few epochs.
        ema = WeightEMA(model, t.ema) if t.ema > 0 and stage.name == "fp32" else None
        st = _RunState(stage, model, opt, sampler, ipe, total, model, Buffers(model), ema=ema, resumed=resume is not None)
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
            st.start_it = st.it = resume["iteration"]
            st.best = resume.get("best_miou", -1.0)
            if resume.get("grad_scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(resume["grad_scaler"])
            if ema is not None and resume.get("ema"):
                ema.load_state_dict(resume["ema"])
        if self.world > 1 and self.device.type == "cuda":
            # BN statistics over all GPUs; the SyncBatchNorm layers share the BN tensors in place.
            st.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.world > 1:
            st.ddp = nn.parallel.DistributedDataParallel(model)
        return st

    def _epoch(self, st: _RunState) -> None:
        """Train from st.it to the end of its epoch (or the stage), then evaluate and save."""
        t = self.recipe.train
        epoch, skip = divmod(st.it, st.ipe)
        st.sampler.set_epoch(epoch, skip)
        if st.stage.on_epoch_start:
            st.stage.on_epoch_start(epoch)
        st.ddp.train()
        if self.recipe.model.freeze_backbone_bn:
            freeze_backbone_bn(st.model)
        tick = time.perf_counter()
        for x, y in self._loader(st.sampler):
            loss, lr = self._step(st, x, y)
            now = time.perf_counter()
            img_s = x.shape[0] * self.world / max(now - tick, 1e-9)
            tick = now
            self._emit("step", stage=st.stage.name, it=st.it, total=st.total, loss=loss, lr=lr, img_s=img_s)
            if st.it % t.log_every == 0 or st.it == st.total:
                row = {
                    "stage": st.stage.name,
                    "epoch": epoch,
                    "iter": st.it,
                    "loss": round(loss, 5),
                    "lr": lr,
                    "img_per_s": round(img_s, 2),
                }
                self._log_row({**row, "time": round(time.time(), 1)})
            if self._stop or st.it >= st.total:
                break
            if t.ckpt_every and st.it % t.ckpt_every == 0 and st.it % st.ipe:
                self._save_last(st)
        if self._stop:
            self._save_last(st)
            raise Interrupted(
                f"interrupted at {st.stage.name} step {st.it}/{st.total}; saved {self.out / 'last.pt'}: resume with --resume",
                self.stop_signal or signal.SIGINT,
            )
        self._end_of_epoch(st, epoch)

    def _step(self, st: _RunState, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One optimizer step; returns (loss, lr). A non-finite loss or gradient keeps the last good state."""
        t = self.recipe.train
        lr = poly_lr(st.stage.lr, st.it, st.total, t.warmup_iters if st.stage.name == "fp32" else 0, t.poly_power)
        for g in st.opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        torch.manual_seed(mix_seeds(t.seed, st.it, 7))  # dropout of this iteration
        x = x.to(self.device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
        y = y.to(self.device)
        st.buffers.save()
        with autocast(self.device, t.amp):
            out = st.ddp(x)
        loss = total_loss(self.loss_fn, out, y, t.aux_weight)
        st.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # Checked after backward, before the update: the weights stay those of the last good step,
        # and data-parallel ranks (whose gradients are averaged) stop together. With fp16 loss
        # scaling, overflowing gradients are expected while the scale settles: the scaler skips
        # those steps, so only the loss is checked.
        bad = non_finite(loss, None if self.scaler.is_enabled() else st.model)
        if bad:
            st.buffers.restore()  # the forward of this step already moved BN statistics
            kept = self._keep_last_good(st)
            raise NumericalError(f"{bad} at {st.stage.name} step {st.it}; lower train.lr or check the data ({kept})")
        self.scaler.step(st.opt)
        self.scaler.update()
        if st.ema is not None:
            st.ema.update(st.model)
        st.it += 1
        return loss.item(), lr

    def _end_of_epoch(self, st: _RunState, epoch: int) -> None:
        """Evaluate when due; save the stage checkpoint (best on val, or the final one) and last.pt."""
        t = self.recipe.train
        epoch_done = st.it % st.ipe == 0 or st.it >= st.total
        if epoch_done and ((epoch + 1) % t.eval_every == 0 or st.it >= st.total):
            st.last_miou = self._evaluate(st.final_model) if self.rank == 0 else 0.0
            self._emit("eval", stage=st.stage.name, it=st.it, miou=st.last_miou, held_out=self.pick_best)
            self._log_row(
                {"stage": st.stage.name, "epoch": epoch, "iter": st.it, "val_miou": round(st.last_miou, 3), "time": round(time.time(), 1)}
            )
            # Trained on the val split: no pick on it, the final weights are the stage's model.
            if (st.last_miou > st.best and self.pick_best) or (not self.pick_best and st.it >= st.total):
                st.best = st.last_miou
                self._save(st.stage, st.final_model, st.opt, st.it, st.best, f"{st.stage.name}.pt", miou=st.last_miou)
        self._save_last(st)
        if self.world > 1:
            dist.barrier()

    def _catch_signals(self) -> dict[int, Any]:
        """SIGINT and SIGTERM save last.pt at the end of the step (rank 0); the old handlers to restore."""
        if self.rank != 0:
            return {}
        drop_alternate_signal_stack()
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _save_last(self, st: _RunState) -> None:
        extra = {"ema": st.ema.state_dict()} if st.ema is not None else {}
        self._save(st.stage, st.model, st.opt, st.it, st.best, "last.pt", **extra)

    def _agree_on_weights(self, model: nn.Module) -> list[str]:
        """Digest of the final weights on every rank; data-parallel ranks that differ are a bug."""
        digest = weights_digest(model)
        if self.world == 1:
            return [digest]
        mine = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        digests = [bytes(t.cpu().tolist()).hex() for t in gathered]
        if len(set(digests)) > 1:
            raise NumericalError(
                f"data-parallel ranks ended with different weights (sha256 per rank: {', '.join(d[:12] for d in digests)}); "
                "report this bug with the recipe"
            )
        return digests

    def _keep_last_good(self, st: _RunState) -> str:
        """Save the weights of the last good step to last.pt; say where the last good state is."""
        last = self.out / "last.pt"
        if st.it > st.start_it:
            self._save_last(st)
            return f"saved the last good state, {st.stage.name} step {st.it}, to {last}"
        if st.resumed:
            return f"{last} keeps the last good state, {st.stage.name} step {st.it}"
        return f"no {st.stage.name} checkpoint was written yet"

    def _on_signal(self, signum, frame) -> None:  # noqa: ANN001
        if self._stop:  # a second CTRL-C (or SIGTERM) stops at once
            raise KeyboardInterrupt
        self._stop = True
        self.stop_signal = signum

    def _save(self, stage: Stage, model: nn.Module, opt, it: int, best: float, name: str, **extra: Any) -> None:  # noqa: ANN001
        if self.rank != 0:
            return
        model_cpu = model
        save_checkpoint(
            self.out / name,
            model=model_cpu,
            recipe=self.recipe,
            classes=self.classes,
            stage=stage.name,
            iteration=it,
            optimizer=opt.state_dict(),
            best_miou=best,
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
            **stage.extra_state(),
            **extra,
        )
        # After the write: a reader of this line (a pre-emption script, the kill tests) knows that
        # this checkpoint is complete on disk. Shown with --verbose.
        log.info("saved %s (%s step %d)", self.out / name, stage.name, it)


class _EvalOnTrain(torch.utils.data.Dataset):
    """Train images through the eval transform (full size, no augmentation), for BN re-estimation."""

    def __init__(self, train_set, val_set) -> None:  # noqa: ANN001
        self.source, self.transform = train_set.source, val_set.transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.transform(*self.source.load(i))


def drop_alternate_signal_stack() -> None:
    """Switch off the main thread's alternate signal stack (Linux), so CTRL-C/SIGTERM run on the
    normal stack.

    OpenVINO's CPU plugin gives the thread an alternate signal stack while a compiled model lives
    and restores the previous one when it is destroyed; two compiled models destroyed in the
    order they were made leave the thread pointing at freed memory, and Python's handlers (installed
    with SA_ONSTACK) then crash the process on the next signal. A process that exported or benched
    with OpenVINO before training (the tests, a notebook) hits it; nothing here needs that stack.
    """
    if sys.platform != "linux":
        return
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    ss_disable = 2
    try:
        ctypes.CDLL(None, use_errno=True).sigaltstack(ctypes.byref(StackT(None, ss_disable, 0)), None)
    except (OSError, AttributeError):  # no libc symbol: nothing to switch off
        return
