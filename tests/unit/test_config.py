"""Recipe loading: validation errors name the key and the fix; overrides; shipped recipes load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeseg.config import Recipe, load_recipe, recipe_from_dict
from edgeseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    recipe = load_recipe(path)
    assert recipe.name == path.stem  # each shipped recipe is named after its file
    # What the file says (the independent reference) is what loads; unset keys take the defaults.
    assert recipe.model.output_stride == raw.get("model", {}).get("output_stride", 16)
    assert recipe.data.format == raw.get("data", {}).get("format", "synthetic")


def test_defaults_and_types(tmp_path: Path) -> None:
    r = load_recipe(_write(tmp_path, "train:\n  lr: 1\n  epochs: 3\n"))
    assert r.name == "r"  # from the file name
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)  # an int is accepted for a float
    assert r.train.epochs == 3 and r.data.format == "synthetic" and r.model.output_stride == 16


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("train:\n  lrr: 0.1\n", r"unknown recipe key 'train\.lrr' \(did you mean 'lr'\?\)"),
        ("trian:\n  lr: 0.1\n", r"unknown recipe key 'trian' \(did you mean 'train'\?\)"),
        ("train:\n  epochs: ten\n", r"'train\.epochs' must be of type int, got 'ten'"),
        ("train:\n  amp: 1\n", r"'train\.amp' must be true or false"),
        ("train:\n  epochs: true\n", r"'train\.epochs' must be a number"),
        ("data:\n  crop_size: 96\n", r"'data\.crop_size' must be a list"),
        ("model:\n  output_stride: 12\n", r"'model\.output_stride' = 12 is invalid: use 8, 16 or 32"),
        ("train:\n  lr: -0.01\n", r"'train\.lr' = -0\.01 is invalid: must be positive"),
        ("train:\n  lr: 0\n", r"'train\.lr' = 0\.0 is invalid"),
        ("model:\n  head: deeplab\n", r"'model\.head' = 'deeplab' is invalid"),
        ("data:\n  crop_size: [100, 96]\n", r"'data\.crop_size'.*multiple of 8"),
        ("quant:\n  calib_method: entropyy\n", r"did you mean 'entropy'"),
        ("train:\n  device: gpu\n", r"'train\.device' = 'gpu' is invalid: use auto, cpu or cuda"),
        ("model: 3\n", r"section 'model' must be a mapping"),
        ("- a\n- b\n", r"must be a mapping of sections"),
    ],
)
def test_bad_recipes_raise_config_error_naming_the_key(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        load_recipe(_write(tmp_path, text))
    assert "\n" not in str(info.value)
    assert str(tmp_path / "r.yaml") in str(info.value)


def test_yaml_syntax_error_gives_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ntrain:\n  lr: 0.1\n  epochs: [1, 2\nmodel:\n  head: deeplabv3\n")
    # The unclosed list opens on line 4; YAML finds the error at the next key, `model:` on line 5.
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == f"recipe '{path}' is not valid YAML at line 5; fix the syntax there"


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe("nope.yaml")
    assert str(info.value) == "recipe 'nope.yaml' does not exist; pass a YAML file such as recipes/smoke.yaml"


def test_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  lr: 0.1\n")
    r = load_recipe(path, ["train.lr=0.5", "model.output_stride=8", "data.crop_size=[64, 96]", "train.max_iters=null", "name=other"])
    assert r.train.lr == 0.5 and r.model.output_stride == 8 and r.data.crop_size == [64, 96]
    assert r.train.max_iters is None and r.name == "other"
    assert load_recipe(path, ["model.backbone_weights=weights/a b.pth"]).model.backbone_weights == "weights/a b.pth"
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*did you mean 'lr'"):
        load_recipe(path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"'model\.output_stride' = 12"):
        load_recipe(path, ["model.output_stride=12"])
    with pytest.raises(ConfigError, match=r"override 'train\.lr' must look like key=value"):
        load_recipe(path, ["train.lr"])
    with pytest.raises(ConfigError, match=r"'train\.lr' must be of type float"):
        load_recipe(path, ["train.lr=fast"])


def test_hash_tracks_content() -> None:
    a, b = recipe_from_dict({}), recipe_from_dict({"train": {"lr": 0.02}})
    assert a.hash() == recipe_from_dict({}).hash() != b.hash()
    assert isinstance(a, Recipe) and len(a.hash()) == 16


def test_hash_ignores_where_a_recipe_trains() -> None:
    auto, cpu = recipe_from_dict({}), recipe_from_dict({"train": {"device": "cpu"}})
    assert cpu.train.device == "cpu" and auto.hash() == cpu.hash()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_train_device_cuda_without_a_gpu_says_what_to_use(tmp_path: Path) -> None:
    from edgeseg.train import fit

    with pytest.raises(ConfigError, match=r"train\.device=cuda but PyTorch sees no CUDA GPU; use train\.device=auto or cpu"):
        fit(recipe_from_dict({"train": {"device": "cuda"}}), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


def test_scientific_notation_reads_as_a_number(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads 1e-5 as a string; recipes and --set read it as YAML 1.2 does."""
    from edgeseg.config import load_recipe

    assert yaml.safe_load("lr: 1e-5") == {"lr": "1e-5"}  # the library's own rule, which the recipe loader corrects
    recipe = tmp_path / "r.yaml"
    recipe.write_text((REPO / "recipes" / "smoke.yaml").read_text().replace("lr: ", "lr: 1e-3 #", 1))
    assert load_recipe(recipe).train.lr == 1e-3
    r = load_recipe(recipe, ["quant.lr=1e-12", "train.lr=2E-3", "train.weight_decay=.5e-4"])
    assert (r.quant.lr, r.train.lr, r.train.weight_decay) == (1e-12, 2e-3, 5e-5)
