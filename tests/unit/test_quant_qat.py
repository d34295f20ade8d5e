"""The QAT stage: calibrated start, range tracking until the freeze epoch, exact resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_quant import tiny_model  # noqa: E402

from edgeseg.config import recipe_from_dict  # noqa: E402
from edgeseg.data.classes import SYNTHETIC  # noqa: E402
from edgeseg.quant import TensorQuantizer, is_quantized, quant_ranges  # noqa: E402
from edgeseg.train import qat_stage  # noqa: E402
from edgeseg.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def recipe(freeze: int | None = None):  # noqa: ANN201
    return recipe_from_dict(
        {
            "name": "tiny",
            "data": {"format": "synthetic", "synthetic_size": [64, 64], "crop_size": [64, 64], "synthetic_num_train": 8},
            "model": {"width_mult": 0.35},
            "quant": {"enabled": True, "epochs": 3, "lr": 0.001, "calib_num_images": 3, "freeze_ranges_epoch": freeze},
        }
    )


@pytest.fixture()
def fp32(tmp_path):  # noqa: ANN001, ANN201
    r = recipe()
    save_checkpoint(tmp_path / "fp32.pt", model=tiny_model(), recipe=r, classes=SYNTHETIC)
    return load_checkpoint(tmp_path / "fp32.pt")


def test_qat_stage_starts_calibrated_and_records_its_quant_state(fp32) -> None:  # noqa: ANN001
    stage, resume = qat_stage(recipe(), fp32, None, None, torch.device("cpu"))
    assert resume is None and stage.name == "qat" and stage.epochs == 3 and stage.lr == 0.001
    assert is_quantized(stage.model) and all(v is not None for v in quant_ranges(stage.model).values())
    state = stage.extra_state()
    assert state["quant_meta"] == {
        "method": "percentile",
        "percentile": 99.99,
        "calib_list": "synthetic:train",
        "num_images": 3,
        "qat": True,
    }
    # The structure to rebuild on resume: every quantizer of the model, in module order.
    assert state["quant"]["quantizers"] == [n for n, m in stage.model.named_modules() if isinstance(m, TensorQuantizer)]
    assert len(state["quant"]["quantizers"]) == 73  # of tiny_model (DeepLabV3+, no aux head)


def test_ranges_follow_the_data_until_the_freeze_epoch(fp32) -> None:  # noqa: ANN001
    stage, _ = qat_stage(recipe(freeze=1), fp32, None, None, torch.device("cpu"))
    model, q = stage.model, stage.model.encoder.input_q
    model.train()
    x = torch.randn(2, 3, 64, 64) * 10  # a batch far outside the calibrated input range
    stage.on_epoch_start(0)
    before = float(q.amax)
    model(x)
    tracked = float(q.amax)
    assert tracked == pytest.approx(before + 0.01 * (float(x.abs().max()) - before), rel=1e-5)
    stage.on_epoch_start(1)
    model(x)
    assert float(q.amax) == tracked


def test_ranges_stay_frozen_by_default(fp32) -> None:  # noqa: ANN001
    stage, _ = qat_stage(recipe(), fp32, None, None, torch.device("cpu"))
    stage.on_epoch_start(0)
    stage.model.train()
    before = quant_ranges(stage.model)
    stage.model(torch.randn(2, 3, 64, 64) * 10)
    assert quant_ranges(stage.model) == before


def test_qat_resume_rebuilds_the_saved_model(fp32, tmp_path) -> None:  # noqa: ANN001
    stage, _ = qat_stage(recipe(), fp32, None, None, torch.device("cpu"))
    with torch.no_grad():
        stage.model.encoder.input_q.amax.fill_(1.5)  # a state a fresh calibration would not give
    save_checkpoint(
        tmp_path / "last.pt", model=stage.model, recipe=recipe(), classes=SYNTHETIC, stage="qat", iteration=7, **stage.extra_state()
    )
    last = load_checkpoint(tmp_path / "last.pt")
    again, resume = qat_stage(recipe(), fp32, last, None, torch.device("cpu"))
    assert resume is last
    assert float(again.model.encoder.input_q.amax) == 1.5
    x = torch.randn(1, 3, 64, 64)
    stage.model.eval(), again.model.eval()
    with torch.no_grad():
        assert torch.equal(stage.model(x), again.model(x))
