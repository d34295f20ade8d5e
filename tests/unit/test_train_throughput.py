"""benchmarks/train_throughput.py: the steps it times are the recipe's, levers change what they say."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import train_throughput as tt  # noqa: E402

RECIPE = REPO / "recipes" / "camvid_mnv2_os16.yaml"


def test_levers_time_the_recipe_and_each_override_side_by_side() -> None:
    variants = tt.lever_variants(RECIPE, ["model.head=deeplabv3plus_s2", "train.loss=balanced"])
    assert [v.name for v in variants] == ["recipe", "model.head=deeplabv3plus_s2", "train.loss=balanced"]
    recipe, s2, balanced = (v.recipe for v in variants)
    # Each variant is the shipped recipe with exactly its one override.
    assert (recipe.model.head, recipe.train.loss) == ("deeplabv3plus_dw", "balanced+lovasz")
    assert (s2.model.head, s2.train.loss) == ("deeplabv3plus_s2", "balanced+lovasz")
    assert (balanced.model.head, balanced.train.loss) == ("deeplabv3plus_dw", "balanced")
    assert all((v.amp, v.channels_last) == (True, True) for v in variants)  # as the recipe trains
    # The recipe's balanced loss needs class weights: the benchmark must run it (it did not).
    rows = tt.measure(variants, (32, 32), batch=2, warmup=0, iters=1)
    assert [r["variant"] for r in rows] == [v.name for v in variants]
    assert rows[0]["speedup"] == 1.0
    for r in rows:
        assert r["median_step_s"] > 0 and math.isclose(r["img_per_s"], 2 / r["median_step_s"])
        assert math.isclose(r["speedup"], rows[0]["median_step_s"] / r["median_step_s"])


def test_a_lever_model_is_built_from_its_own_recipe() -> None:
    (base, s2) = tt.lever_variants(RECIPE, ["model.head=deeplabv3plus_s2"])
    import torch

    x, y = torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long)
    assert tt.Runner(base, 11, x, y).model.decoder.fine is None
    assert tt.Runner(s2, 11, x, y).model.decoder.fine is not None


def test_precision_variants_are_the_four_settings() -> None:
    from edgeseg.config import load_recipe

    got = [(v.name, v.amp, v.channels_last) for v in tt.precision_variants(load_recipe(RECIPE))]
    assert got == [
        ("fp32", False, False),
        ("autocast", True, False),
        ("channels_last", False, True),
        ("autocast + channels_last", True, True),
    ]


def test_an_unknown_lever_is_refused_with_the_key() -> None:
    from edgeseg.errors import ConfigError

    with pytest.raises(ConfigError, match="model.heads"):
        tt.lever_variants(RECIPE, ["model.heads=x"])
