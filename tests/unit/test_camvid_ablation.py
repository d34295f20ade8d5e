"""benchmarks/camvid_ablation.py: every row is a valid override of the recipe, seeds average by hand."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import camvid_ablation as ab  # noqa: E402


@pytest.mark.parametrize("name", sorted(ab.ROWS))
def test_each_row_loads_as_the_recipe_with_its_overrides(name: str) -> None:
    common = ["train.epochs=8", "train.eval_every=8", "quant.enabled=false", "train.seed=1"]
    recipe = load_recipe(REPO / ab.RECIPE, common + ab.ROWS[name])
    assert (recipe.train.epochs, recipe.train.seed, recipe.quant.enabled) == (8, 1, False)


def _result(name: str, seed: int | None, miou: float, pole: float | None) -> dict:
    per = {"Pole": pole, "SignSymbol": 30.0, "Pedestrian": 40.0, "Bicyclist": 60.0, "Sky": 90.0}
    return {"miou": miou, "per_class_iou": per, "row": {"name": name, "overrides": [], "seed": seed, "minutes": 1.5}}


def test_table_gives_each_seed_then_the_rows_mean() -> None:
    text = ab.table([_result("baseline", 0, 60.0, 10.0), _result("baseline", 1, 63.0, 4.0), _result("head_dw", None, 61.5, None)])
    lines = text.splitlines()
    assert lines[2].startswith("| baseline | 0 | `-` | 60.00 | 10.0 | 30.0 | 40.0 | 60.0 | 1.5 |")
    assert lines[3].startswith("| baseline | 1 | `-` | 63.00 | 4.0 |")
    # (60 + 63) / 2 = 61.5, Pole (10 + 4) / 2 = 7
    assert lines[4].startswith("| **baseline, mean** | 2 seeds | | **61.50** | 7.0 | 30.0 |")
    # One run: no mean line; a class absent from val is NaN, not 0.
    assert lines[5].startswith("| head_dw | - | `-` | 61.50 | nan |")
    assert len(lines) == 6
    assert math.isnan(ab.scores(_result("x", None, 1.0, None))[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "nope"], "unknown rows ['nope']"),
        (["--seeds", "0,x"], "give integers separated by commas"),
        (["--seeds", "-1"], "seeds must be 0 or more"),
        (["--epochs", "0"], "give at least 1"),
    ],
)
def test_bad_arguments_fail_before_any_training(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "camvid_ablation.py"), "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []
