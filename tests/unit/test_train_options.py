"""Training options against hand computations: model.freeze_backbone_bn (the encoder's BN keeps
its running statistics through a training step, the head's move), train.bn_recalibrate (BN
statistics re-estimated on full-size train images, as a cumulative average over pairs) and
`edgeseg train --init CKPT` (QAT starts from CKPT's weights: its BN folded by hand)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from edgeseg.cli import app
from edgeseg.config import load_recipe, recipe_from_dict
from edgeseg.data.classes import SYNTHETIC
from edgeseg.data.dataset import eval_dataset, train_dataset
from edgeseg.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.data.synthetic import make_scene
from edgeseg.errors import ConfigError
from edgeseg.models import build_model
from edgeseg.train.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.train.evaluate import recalibrate_bn
from edgeseg.train.loop import Stage, Trainer

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "smoke.yaml"
SIZE = (64, 64)


def _recipe(**train: Any) -> Any:
    """4 train scenes in one batch of 4: one step an epoch; no augmentation that changes BN inputs' sizes."""
    freeze = bool(train.pop("freeze_backbone_bn", False))
    return recipe_from_dict(
        {
            "name": "opts",
            "data": {"synthetic_num_train": 4, "synthetic_num_val": 2, "synthetic_size": list(SIZE), "crop_size": list(SIZE)},
            "model": {"width_mult": 0.35, "freeze_backbone_bn": freeze},
            "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "amp": False, "channels_last": False, "device": "cpu", **train},
            "quant": {"enabled": False},
        }
    )


def _bn_stats(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{'encoder'|'head': {bn name: running mean and var concatenated}}."""
    out: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "head": {}}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            part = "encoder" if name.startswith("encoder.") else "head"
            out[part][name] = torch.cat([m.running_mean, m.running_var]).clone()
    return out


def _train_one_step(recipe: Any, out: Path) -> tuple[nn.Module, Trainer]:
    torch.manual_seed(0)
    model = build_model(num_classes=5, output_stride=16, width_mult=0.35)
    trainer = Trainer(recipe, out, train_dataset(recipe), eval_dataset(recipe), torch.device("cpu"))
    trainer.run(Stage("fp32", model, epochs=1, lr=recipe.train.lr, max_iters=1))
    return model, trainer


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_backbone_bn_keeps_encoder_statistics_through_a_step(tmp_path: Path, freeze: bool) -> None:
    recipe = _recipe(freeze_backbone_bn=freeze)
    torch.manual_seed(0)
    model = build_model(num_classes=5, output_stride=16, width_mult=0.35)
    before = _bn_stats(model)
    modes: dict[str, list[bool]] = {"encoder": [], "head": []}
    enc_bn, head_bn = model.encoder.features[0][1], model.decoder.aspp.project[1]
    assert isinstance(enc_bn, nn.BatchNorm2d) and isinstance(head_bn, nn.BatchNorm2d)
    for part, bn in (("encoder", enc_bn), ("head", head_bn)):
        bn.register_forward_pre_hook(lambda m, args, part=part: modes[part].append(m.training) if torch.is_grad_enabled() else None)
    trainer = Trainer(recipe, tmp_path, train_dataset(recipe), eval_dataset(recipe), torch.device("cpu"))
    trainer.run(Stage("fp32", model, epochs=1, lr=recipe.train.lr, max_iters=1))
    after = _bn_stats(model)

    assert modes == {"encoder": [not freeze], "head": [True]}  # the one training forward
    changed = {part: [n for n in before[part] if not torch.equal(before[part][n], after[part][n])] for part in before}
    assert len(before["encoder"]) == 51 and len(before["head"]) > 5
    assert changed["encoder"] == ([] if freeze else list(before["encoder"]))
    assert changed["head"] == list(before["head"])  # the decoder and ASPP BN train either way
    # The step did train the encoder (its weights moved), only its BN statistics stayed.
    saved = load_checkpoint(tmp_path / "fp32.pt")["model"]
    assert not torch.equal(
        saved["encoder.features.0.0.weight"], build_model(num_classes=5, width_mult=0.35).state_dict()["encoder.features.0.0.weight"]
    )


def _pairs_by_hand(weight: torch.Tensor, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first BN's statistics re-estimated by hand: the stride-2 3x3 stem conv on each
    normalised image; per pair of images the batch mean and unbiased variance over (N, H, W);
    then the plain average over pairs (BN's cumulative moving average)."""
    mean = np.asarray(IMAGENET_MEAN, np.float64)
    std = np.asarray(IMAGENET_STD, np.float64)
    x = [torch.from_numpy(((im / 255.0 - mean) / std).transpose(2, 0, 1).copy())[None] for im in images]
    means, vars_ = [], []
    for i in range(0, len(x) // 2 * 2, 2):
        y = F.conv2d(torch.cat(x[i : i + 2]), weight.double(), stride=2, padding=1)
        flat = y.transpose(0, 1).reshape(y.shape[1], -1)
        means.append(flat.mean(1))
        vars_.append(flat.var(1, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(vars_).mean(0)


@pytest.mark.parametrize(("num_images", "pairs"), [(4, 2), (3, 1)])
def test_bn_recalibrate_reestimates_statistics_on_train_images(tmp_path: Path, num_images: int, pairs: int) -> None:
    model, _ = _train_one_step(_recipe(bn_recalibrate=num_images), tmp_path)
    # The stage evaluated (so recalibrated) after its step, then saved: the checkpoint holds them.
    saved = load_checkpoint(tmp_path / "fp32.pt")["model"]
    images = [make_scene(0, i, SIZE)[0] for i in range(num_images)]  # train scenes 0.., full size
    mean, var = _pairs_by_hand(saved["encoder.features.0.0.weight"], images)
    torch.testing.assert_close(saved["encoder.features.0.1.running_mean"].double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(saved["encoder.features.0.1.running_var"].double(), var, rtol=1e-4, atol=1e-5)
    # Every BN (encoder and head) was re-estimated from zero on the same pairs of images.
    counts = {k: int(v) for k, v in saved.items() if k.endswith("num_batches_tracked")}
    assert len(counts) > 60 and set(counts.values()) == {pairs}


def test_bn_recalibrate_leaves_a_frozen_backbone_statistics(tmp_path: Path) -> None:
    """With model.freeze_backbone_bn the encoder's BN statistics are part of its weights (the shared
    backbone has them folded to mean 0 / var 1): recalibration re-estimates the head's only."""
    torch.manual_seed(0)
    initial = build_model(num_classes=5, output_stride=16, width_mult=0.35).state_dict()
    _train_one_step(_recipe(bn_recalibrate=4, freeze_backbone_bn=True), tmp_path)
    saved = load_checkpoint(tmp_path / "fp32.pt")["model"]
    stats = [k for k in saved if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    encoder = [k for k in stats if k.startswith("encoder.")]
    head = [k for k in stats if not k.startswith("encoder.")]
    assert len(encoder) == 3 * 51 and len(head) > 15
    assert all(torch.equal(saved[k], initial[k]) for k in encoder)  # as built: 0 / 1, 0 batches
    assert {int(saved[k]) for k in head if k.endswith("num_batches_tracked")} == {2}  # re-estimated on 2 pairs
    # The head's first BN holds the statistics of its conv on the full-size train images, not the step's.
    assert not any(torch.equal(saved[k], initial[k]) for k in head if k.endswith("running_var"))


def test_bn_recalibrate_off_keeps_the_training_statistics(tmp_path: Path) -> None:
    model, _ = _train_one_step(_recipe(bn_recalibrate=0), tmp_path)
    saved = load_checkpoint(tmp_path / "fp32.pt")["model"]
    assert {int(v) for k, v in saved.items() if k.endswith("num_batches_tracked")} == {1}  # the one training step
    mean, _ = _pairs_by_hand(saved["encoder.features.0.0.weight"], [make_scene(0, i, SIZE)[0] for i in range(4)])
    assert not torch.allclose(saved["encoder.features.0.1.running_mean"].double(), mean, atol=1e-3)


@pytest.mark.parametrize("available", [1, 8])
def test_bn_recalibrate_with_fewer_than_two_images_keeps_statistics(available: int) -> None:
    """One image cannot be re-estimated in pairs: the statistics stay (they used to be reset to 0/1)."""
    recipe = _recipe()
    torch.manual_seed(0)
    model = build_model(num_classes=5, width_mult=0.35)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    before = model.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    dataset = eval_dataset(recipe)
    recalibrate_bn(model, torch.utils.data.Subset(dataset, range(available)) if available < len(dataset) else dataset, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- train --init CKPT -----------------------------------------------------------------------------

INIT_SET = [
    "data.synthetic_num_train=4", "data.synthetic_num_val=2", "data.synthetic_size=[64, 64]", "data.crop_size=[64, 64]",
    "train.batch_size=4", "train.epochs=1", "train.amp=false", "train.channels_last=false",
    "quant.enabled=true", "quant.max_iters=1", "quant.calib_num_images=2", "quant.lr=1.0e-12",
]  # fmt: skip


def _init_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """An FP32 checkpoint of the CLI's recipe with its own weights (seed 123) and non-trivial BN statistics."""
    recipe = load_recipe(SMOKE, INIT_SET)
    torch.manual_seed(123)
    model = build_model(num_classes=5, output_stride=16, width_mult=0.35).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    save_checkpoint(path, model=model, recipe=recipe, classes=SYNTHETIC)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _fold_by_hand(state: dict[str, torch.Tensor], conv: str, bn: str) -> tuple[torch.Tensor, torch.Tensor]:
    k = state[f"{bn}.weight"].double() / torch.sqrt(state[f"{bn}.running_var"].double() + 1e-5)
    w = state[f"{conv}.weight"].double() * k.reshape(-1, 1, 1, 1)
    b = state[f"{bn}.bias"].double() - state[f"{bn}.running_mean"].double() * k
    return w, b


def test_train_init_starts_qat_from_the_checkpoint_weights(tmp_path: Path) -> None:
    src = _init_checkpoint(tmp_path / "init.pt")
    out = tmp_path / "run"
    args = ["train", str(SMOKE), "--out", str(out), "--init", str(tmp_path / "init.pt"), "--qat"]
    result = CliRunner().invoke(app, args + [a for s in INIT_SET for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert not (out / "fp32.pt").exists()  # the FP32 stage was skipped
    with (out / "metrics.csv").open() as f:
        assert {row["stage"] for row in csv.DictReader(f)} == {"qat"}
    qat = load_checkpoint(out / "qat.pt")
    assert qat["quant_meta"]["qat"] is True and qat["quant_meta"]["num_images"] == 2
    # One QAT step at lr 1e-12 moves nothing measurable: the weights are init.pt's, BN folded.
    pairs = [
        ("encoder.features.0.0", "encoder.features.0.1"),  # stem conv
        ("encoder.features.17.conv.2", "encoder.features.17.conv.3"),  # last projection conv
        ("decoder.aspp.project.0", "decoder.aspp.project.1"),
    ]
    fresh = build_model(num_classes=5, width_mult=0.35).state_dict()  # what training from scratch starts from
    for conv, bn in pairs:
        w, b = _fold_by_hand(src, conv, bn)
        torch.testing.assert_close(qat["model"][f"{conv}.weight"].double(), w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(qat["model"][f"{conv}.bias"].double(), b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(fresh[f"{conv}.weight"].double(), w, atol=1e-3)  # the check can tell them apart


def test_train_init_without_qat_is_refused_before_writing(tmp_path: Path) -> None:
    _init_checkpoint(tmp_path / "init.pt")
    out = tmp_path / "run"
    args = ["train", str(SMOKE), "--out", str(out), "--init", str(tmp_path / "init.pt"), "--no-qat"]
    with pytest.raises(ConfigError, match=r"--init .*init\.pt' starts the QAT stage .*add --qat"):
        app(args + [a for s in INIT_SET for a in ("--set", s)], standalone_mode=False)
    assert not out.exists() or not any(out.iterdir())
