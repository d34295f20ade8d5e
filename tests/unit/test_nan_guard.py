"""NaN/inf guard of the training loop: it stops at the step that went wrong, names it, and what
the message says about last.pt is true: the state of the last good step, or no checkpoint yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from edgeseg.config import recipe_from_dict
from edgeseg.data.dataset import eval_dataset, train_dataset
from edgeseg.errors import NumericalError
from edgeseg.models import build_model
from edgeseg.train.checkpoint import load_checkpoint
from edgeseg.train.loop import Stage, Trainer

# 8 scenes in batches of 4: 2 steps an epoch; last.pt only at epoch ends (ckpt_every=0).
TINY: dict[str, Any] = {
    "name": "nan",
    "data": {"synthetic_num_train": 8, "synthetic_num_val": 2, "synthetic_size": [48, 48], "crop_size": [48, 48]},
    "model": {"width_mult": 0.35},
    "train": {"epochs": 2, "batch_size": 4, "lr": 0.02, "warmup_iters": 0, "amp": False, "deterministic": True, "log_every": 1},
    "quant": {"enabled": False},
}  # fmt: skip
FIX = "lower train.lr or check the data"


class _Poisoned(torch.utils.data.Dataset):
    """Training images turn to NaN once `poisoned` is set (a broken sensor, a bad decode)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset, self.classes, self.source = dataset, dataset.classes, dataset.source
        self.poisoned = False

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[item]
        return (torch.full_like(x, float("nan")) if self.poisoned else x), y


def _trainer(out: Path, train_set: Any, callback: Any = None) -> Trainer:
    recipe = recipe_from_dict(TINY)
    return Trainer(recipe, out, train_set, eval_dataset(recipe), torch.device("cpu"), callback)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(num_classes=5, width_mult=0.35)


def _after_step(step: int, action: Any) -> Any:
    def callback(event: str, **info: Any) -> None:
        if event == "step" and info["it"] == step:
            action()

    return callback


def test_nan_at_the_first_step_says_no_checkpoint_was_written(tmp_path: Path) -> None:
    data = _Poisoned(train_dataset(recipe_from_dict(TINY)))
    data.poisoned = True
    with pytest.raises(NumericalError) as info:
        _trainer(tmp_path, data).run(Stage("fp32", _model(), 2, 0.02, None))
    assert str(info.value) == f"loss is nan at fp32 step 0; {FIX} (no fp32 checkpoint was written yet)"
    assert not (tmp_path / "last.pt").exists()


def test_nan_in_the_first_epoch_saves_the_last_good_step(tmp_path: Path) -> None:
    # Reference: the same run stopped cleanly after one step.
    ref = _trainer(tmp_path / "ref", train_dataset(recipe_from_dict(TINY))).run(Stage("fp32", _model(), 2, 0.02, 1))
    assert ref["iters"] == 1
    good = load_checkpoint(tmp_path / "ref/last.pt")

    data = _Poisoned(train_dataset(recipe_from_dict(TINY)))
    out = tmp_path / "run"
    trainer = _trainer(out, data, _after_step(1, lambda: setattr(data, "poisoned", True)))
    with pytest.raises(NumericalError) as info:
        trainer.run(Stage("fp32", _model(), 2, 0.02, None))
    assert str(info.value) == f"loss is nan at fp32 step 1; {FIX} (saved the last good state, fp32 step 1, to {out / 'last.pt'})"
    kept = load_checkpoint(out / "last.pt")
    assert kept["iteration"] == 1 and kept["stage"] == "fp32"
    for name, value in good["model"].items():
        assert torch.equal(value, kept["model"][name]), f"{name} is not the state of step 1"


def test_non_finite_gradient_with_finite_loss_stops_before_the_update(tmp_path: Path) -> None:
    model = _model()
    weight = model.decoder.classifier.weight
    before: dict[str, torch.Tensor] = {}

    def corrupt_gradient() -> None:
        before.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        weight.register_hook(lambda g: g * float("inf"))  # an overflow in backward only

    trainer = _trainer(tmp_path, train_dataset(recipe_from_dict(TINY)), _after_step(3, corrupt_gradient))
    with pytest.raises(NumericalError) as info:
        trainer.run(Stage("fp32", model, 3, 0.02, None))
    assert str(info.value) == (
        f"a gradient is not finite at fp32 step 3; {FIX} (saved the last good state, fp32 step 3, to {tmp_path / 'last.pt'})"
    )
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["iteration"] == 3
    for name, value in before.items():
        assert torch.equal(value, kept["model"][name]), f"{name} changed by the step whose gradient was inf"


def test_nan_right_after_resume_keeps_last_pt_untouched(tmp_path: Path) -> None:
    _trainer(tmp_path, train_dataset(recipe_from_dict(TINY))).run(Stage("fp32", _model(), 2, 0.02, 2))
    saved = (tmp_path / "last.pt").read_bytes()
    resume = load_checkpoint(tmp_path / "last.pt")
    model = _model()
    model.load_state_dict(resume["model"])
    data = _Poisoned(train_dataset(recipe_from_dict(TINY)))
    data.poisoned = True
    with pytest.raises(NumericalError) as info:
        _trainer(tmp_path, data).run(Stage("fp32", model, 2, 0.02, None), resume=resume)
    assert str(info.value) == f"loss is nan at fp32 step 2; {FIX} ({tmp_path / 'last.pt'} keeps the last good state, fp32 step 2)"
    assert (tmp_path / "last.pt").read_bytes() == saved
