"""Training: loss goes down, resume is bit-exact, NaN stops cleanly, sampler and LR schedule."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from edgeseg.config import load_recipe, recipe_from_dict
from edgeseg.data.classes import SYNTHETIC
from edgeseg.data.dataset import eval_dataset, train_dataset
from edgeseg.errors import CheckpointError, ConfigError, EdgesegError, NumericalError
from edgeseg.models import build_model
from edgeseg.train import fit
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from edgeseg.train.guards import weights_digest
from edgeseg.train.loop import Interrupted, Stage, Trainer, _param_groups, poly_lr
from edgeseg.train.sampling import SeededSampler

REPO = Path(__file__).resolve().parents[2]

# 8 training scenes in batches of 4: 2 iterations an epoch. Every source of randomness is on:
# scale/crop/flip/jitter, dropout (ASPP and aux head), bf16 autocast, channels_last.
TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {
        "synthetic_num_train": 8, "synthetic_num_val": 2, "synthetic_size": [64, 64], "crop_size": [48, 48],
        "scale_range": [0.75, 1.5], "color_jitter": 0.2,
    },
    "model": {"width_mult": 0.35, "aux_loss": True},
    "train": {"epochs": 3, "batch_size": 4, "lr": 0.02, "warmup_iters": 2, "amp": True, "deterministic": True, "log_every": 1, "device": "cpu"},
    "quant": {"enabled": False},
}  # fmt: skip


def _state(run: Path) -> dict[str, Any]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("uninterrupted")
    results = fit(recipe_from_dict(TINY), out)
    return out, results


def test_run_writes_checkpoints_and_metrics(reference_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = reference_run
    assert sorted(p.name for p in out.iterdir()) == [
        ".edgeseg.lock", "best.pt", "fp32.pt", "last.pt", "metrics.csv", "run.json", "summary.json", "tb",
    ]  # fmt: skip
    last = load_checkpoint(out / "last.pt")
    assert last["iteration"] == 6 and last["stage"] == "fp32" and last["stage_done"] == "fp32"
    assert last["classes"]["names"][0] == "background" and last["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert last["recipe"]["name"] == "tiny" and last["arch"]["atrous"] == "exact"
    # The digest the trainer reports is that of the weights it saved.
    assert results["fp32"]["weights_sha256"] == weights_digest(model_from_checkpoint(last))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == "fp32.pt" and summary["fp32"]["iters"] == 6
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["iter"]) for r in rows if r["loss"]] == [1, 2, 3, 4, 5, 6]
    assert len([r for r in rows if r["val_miou"]]) == 3  # one eval per epoch
    best = load_checkpoint(out / "best.pt")
    assert best["miou"] == pytest.approx(max(float(r["val_miou"]) for r in rows if r["val_miou"]), abs=1e-3)


@pytest.mark.parametrize("stop_at", [2, 3], ids=["epoch_end", "mid_epoch"])
def test_resume_is_bit_exact(reference_run: tuple[Path, dict[str, Any]], tmp_path: Path, stop_at: int, interrupt_at) -> None:  # noqa: ANN001
    ref_dir, _ = reference_run
    recipe = recipe_from_dict(TINY)
    with pytest.raises(Interrupted) as info:
        fit(recipe, tmp_path, callback=interrupt_at(stop_at))
    assert str(info.value) == f"interrupted at fp32 step {stop_at}/6; saved {tmp_path / 'last.pt'}: resume with --resume"
    assert _state(tmp_path)["iteration"] == stop_at
    fit(recipe, tmp_path, resume=True)
    ref, got = _state(ref_dir), _state(tmp_path)
    assert got["iteration"] == ref["iteration"] == 6
    assert ref["model"].keys() == got["model"].keys()
    for key, value in ref["model"].items():
        assert torch.equal(value, got["model"][key]), f"{key} differs after resume"
    for pid, s in ref["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], got["optimizer"]["state"][pid]["momentum_buffer"])
    assert ref["best_miou"] == got["best_miou"]


def test_resume_refuses_missing_or_other_architecture(reference_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        fit(recipe_from_dict(TINY), tmp_path, resume=True)
    assert str(info.value) == f"--resume: '{tmp_path / 'last.pt'}' does not exist; run without --resume to start"
    ref_dir, _ = reference_run
    assert not (tmp_path / "run.json").exists()  # a failed --resume leaves no mark on the folder
    (tmp_path / "last.pt").write_bytes((ref_dir / "last.pt").read_bytes())
    # Another recipe's run: refused by its recipe hash first, with what to do ...
    other = recipe_from_dict(TINY, ["model.width_mult=0.5"])
    with pytest.raises(ConfigError) as info:
        fit(other, tmp_path, resume=True)
    assert str(info.value) == (
        f"run folder '{tmp_path}' holds a run of another recipe (hash {recipe_from_dict(TINY).hash()}, this one {other.hash()}); "
        "use --out NEW, or --force to train this recipe there"
    )
    # ... and with --force, by the checkpoint's architecture.
    with pytest.raises(CheckpointError) as info:
        fit(other, tmp_path, resume=True, force=True)
    assert str(info.value) == (
        f"checkpoint '{tmp_path / 'last.pt'}' has width_mult=0.35 but the recipe builds width_mult=0.5; "
        "use a checkpoint of the same architecture or change the recipe"
    )


def test_run_folder_is_one_recipes_and_one_process(reference_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from edgeseg.train.run_folder import LOCK_FILE, run_lock

    ref_dir, _ = reference_run
    for name in ("last.pt", "summary.json", "run.json"):
        (tmp_path / name).write_bytes((ref_dir / name).read_bytes())
    before = (tmp_path / "summary.json").read_bytes()
    with pytest.raises(ConfigError) as info:
        fit(recipe_from_dict(TINY), tmp_path, resume=True)
    assert str(info.value) == (
        f"the run in '{tmp_path}' already finished (see {tmp_path / 'summary.json'}); nothing to resume: use --out NEW to train again"
    )
    assert (tmp_path / "summary.json").read_bytes() == before  # the finished run's summary is kept
    with run_lock(tmp_path), pytest.raises(ConfigError) as info:
        with run_lock(tmp_path):
            pass
    assert str(info.value) == (
        f"run folder '{tmp_path}' is in use by another edgeseg (pid {os.getpid()}); wait for it to end or use --out NEW"
    )
    assert (tmp_path / LOCK_FILE).exists() and not (tmp_path / (LOCK_FILE + ".pid")).exists()  # released


def test_smoke_recipe_reduces_loss(tmp_path: Path) -> None:
    # On the CPU everywhere: 12 steps are a check of the loop, and their loss curve depends on the
    # device (tests/integration/test_cuda.py checks that training on a GPU learns).
    overrides = [
        "data.synthetic_num_train=16", "data.synthetic_size=[64, 64]", "data.crop_size=[64, 64]", "train.batch_size=4",
        "train.epochs=3", "train.eval_every=3", "quant.enabled=false", "train.device=cpu",
    ]  # fmt: skip
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", overrides)
    losses: list[float] = []
    fit(recipe, tmp_path, callback=lambda event, **i: losses.append(i["loss"]) if event == "step" else None)
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"


class _PoisonAfter(torch.utils.data.Dataset):
    """Training images turn to NaN once `poisoned` is set (a broken sensor, a bad decode)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset, self.classes, self.source = dataset, dataset.classes, dataset.source
        self.poisoned = False

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[item]
        return (torch.full_like(x, float("nan")) if self.poisoned else x), y


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    recipe = recipe_from_dict(TINY)
    train_set = _PoisonAfter(train_dataset(recipe))

    def poison_after_first_epoch(event: str, **info: Any) -> None:
        if event == "step" and info["it"] == 2:
            train_set.poisoned = True

    torch.manual_seed(0)
    model = build_model(num_classes=5, width_mult=0.35, aux_loss=True)
    trainer = Trainer(recipe, tmp_path, train_set, eval_dataset(recipe), torch.device("cpu"), poison_after_first_epoch)
    with pytest.raises(NumericalError) as info:
        trainer.run(Stage("fp32", model, 3, 0.02, None))
    assert str(info.value) == (
        f"loss is nan at fp32 step 2; lower train.lr or check the data (saved the last good state, fp32 step 2, to {tmp_path / 'last.pt'})"
    )
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["iteration"] == 2
    restored = model_from_checkpoint(last)
    assert all(torch.isfinite(p).all() for p in restored.state_dict().values() if p.is_floating_point())


def test_seeded_sampler_shards_and_repeats() -> None:
    a = SeededSampler(10, 2, seed=0, rank=0, world=2)
    b = SeededSampler(10, 2, seed=0, rank=1, world=2)
    assert a.num_batches == b.num_batches == 2  # 5 images per rank, whole batches only
    ia, ib = [i for i, _ in a], [i for i, _ in b]
    assert len(ia) == len(ib) == 4 and not set(ia) & set(ib)
    assert [i for i, _ in SeededSampler(10, 2, seed=0, rank=0, world=2)] == ia
    a.set_epoch(1)
    assert [i for i, _ in a] != ia
    full = list(SeededSampler(8, 2, seed=3))
    tail = SeededSampler(8, 2, seed=3)
    tail.set_epoch(0, skip_batches=3)
    assert list(tail) == full[6:] and len(tail) == 2
    assert len({s for _, s in full}) == len(full)  # a distinct augmentation seed per sample
    with pytest.raises(EdgesegError) as info:
        SeededSampler(3, 4, seed=0)
    assert str(info.value) == "the training split has 3 images, fewer than one batch of 4 per process; lower train.batch_size"


def test_poly_lr_with_warmup() -> None:
    assert poly_lr(0.01, 0, 110, 10, 0.9) == pytest.approx(0.001)
    assert poly_lr(0.01, 9, 110, 10, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 10, 110, 10, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 60, 110, 10, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 110, 110, 10, 0.9) == 0.0
    assert poly_lr(0.01, 0, 100, 0, 0.9) == pytest.approx(0.01)


def test_backbone_lr_multiplier_groups() -> None:
    model = build_model(num_classes=3, width_mult=0.35)
    groups = _param_groups(model, recipe_from_dict({"train": {"backbone_lr_mult": 0.1}}), 0.02)
    assert groups[0]["lr"] == pytest.approx(0.002) and groups[1]["lr"] == pytest.approx(0.02)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        # torch.load's own reason, shortened to its first sentence: a legacy-format header read
        # past the end of 4 bytes, a zip magic number with no archive after it, and pickle opcode
        # 'g' (103), which the weights-only unpickler does not accept.
        (b"junk", "struct.error: unpack requires a buffer of 4 bytes"),
        (b"PK\x03\x04garbage", "RuntimeError: PytorchStreamReader failed reading zip archive: not a ZIP archive"),
        (b"\x80\x02garbage", "UnpicklingError: Unsupported operand 103"),
    ],
    ids=["text", "zip", "pickle"],
)
def test_a_file_that_is_no_checkpoint_says_what_was_wrong(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "x.pt")
    assert str(info.value) == f"'{tmp_path / 'x.pt'}' is not a readable checkpoint ({reason}); pass a .pt written by edgeseg"


def test_checkpoints_from_before_the_atrous_fix_keep_their_dilation(reference_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    ckpt = load_checkpoint(reference_run[0] / "last.pt")
    new = model_from_checkpoint(ckpt)
    del ckpt["arch"]["atrous"]  # what checkpoints written before the fix look like
    old = model_from_checkpoint(ckpt, output_stride=8)
    # Old rule: the block whose stride is removed is dilated too (block 7 at OS8, block 14 at OS16).
    assert old.encoder.features[7].depthwise.dilation == (2, 2) and old.encoder.features[14].depthwise.dilation == (4, 4)
    old.set_output_stride(16)
    assert old.encoder.features[14].depthwise.dilation == (2, 2)
    assert new.encoder.features[14].depthwise.dilation == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    # Saving such a model again (fine-tuning, QAT) keeps the old rule.
    save_checkpoint(tmp_path / "again.pt", model=old, recipe=recipe_from_dict(TINY), classes=SYNTHETIC)
    again = load_checkpoint(tmp_path / "again.pt")
    assert again["arch"]["atrous"] == "legacy"
    assert model_from_checkpoint(again).encoder.features[14].depthwise.dilation == (2, 2)


def test_deterministic_mode_ends_with_the_run(reference_run: tuple[Path, dict[str, Any]]) -> None:
    """torch's deterministic switch is process-wide: a deterministic run must not leave it on."""
    assert not torch.are_deterministic_algorithms_enabled()


def test_launch_leaves_one_process_and_torchrun_workers_to_train_themselves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import subprocess

    from edgeseg.train.launch import launch

    monkeypatch.setattr(subprocess, "call", lambda cmd: pytest.fail(f"launched {cmd}"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch(REPO / "recipes" / "smoke.yaml", tmp_path, nproc_per_node=1) is None
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun worker: it trains, it does not launch again
    assert launch(REPO / "recipes" / "smoke.yaml", tmp_path, nproc_per_node=2, init=tmp_path / "fp32.pt") is None
