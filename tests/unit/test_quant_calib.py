"""Calibration methods against theory, calibration lists, and the `calibrate` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgeseg.cli import app
from edgeseg.config import recipe_from_dict
from edgeseg.data.calib import read_calib_list
from edgeseg.data.classes import SYNTHETIC
from edgeseg.data.synthetic import make_scene
from edgeseg.errors import DataError
from edgeseg.models import build_model
from edgeseg.quant import Calibrator, ranges_path
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

N = 1_000_000


def amax_of(values: torch.Tensor, method: str, chunks: int = 4) -> float:
    cal = Calibrator(method)
    for part in values.split(len(values) // chunks):
        cal.collect(part)
    return cal.compute(99.99)


@pytest.fixture(scope="module")
def gauss() -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(0))


def test_percentile_clips_an_outlier_that_max_keeps(gauss: torch.Tensor) -> None:
    x = gauss.clone()
    x[0] = 50.0  # one outlier, in the first batch
    got = {m: amax_of(x, m) for m in ("max", "percentile", "mse", "entropy")}
    assert got["max"] == pytest.approx(50.0)
    assert got["percentile"] < 4.5
    for m in ("mse", "entropy"):  # both clip it too, but less than the 99.99th percentile
        assert got["percentile"] <= got[m] < 0.5 * got["max"], got


def test_percentile_is_the_gaussian_quantile(gauss: torch.Tensor) -> None:
    # P(|z| < 3.8906) = 99.99 % for a standard normal.
    assert amax_of(gauss, "percentile") == pytest.approx(3.8906, abs=0.02)


@pytest.mark.parametrize(
    ("dist", "optimum"),
    # Optimal 8-bit clipping for minimum MSE (Banner et al., "ACIQ", 2019): Gaussian 3.92 sigma,
    # Laplace 9.89 b.
    [("gauss", 3.92), ("laplace", 9.89)],
)
def test_mse_finds_the_analytic_optimal_clip(dist: str, optimum: float, gauss: torch.Tensor) -> None:
    if dist == "gauss":
        x = gauss
    else:
        torch.manual_seed(1)
        x = torch.distributions.Laplace(0.0, 1.0).sample((N,))
    got = amax_of(x, "mse")
    assert got == pytest.approx(optimum, rel=0.03)
    assert got < amax_of(x, "max")


def test_entropy_on_a_gaussian_is_a_few_sigma(gauss: torch.Tensor) -> None:
    got = amax_of(gauss, "entropy")
    assert 3.5 < got < 5.5
    assert amax_of(gauss, "percentile") < got <= amax_of(gauss, "max")


def test_no_method_clips_a_uniform_distribution() -> None:
    x = torch.rand(N, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for method in ("max", "percentile", "mse", "entropy"):
        assert amax_of(x, method) == pytest.approx(1.0, abs=0.01), method


def test_histogram_growth_matches_one_pass(gauss: torch.Tensor) -> None:
    # Batches of growing range (bins appended, then merged) give the one-pass percentile.
    x = torch.cat([gauss[: N // 2] * 0.01, gauss[N // 2 :] * 10])
    one = Calibrator("percentile")
    one.collect(x)
    grown = Calibrator("percentile")
    for part in x.split(N // 8):
        grown.collect(part)
    assert grown.compute(99.0) == pytest.approx(one.compute(99.0), rel=0.01)
    assert len(grown.counts) <= 4 * 2048


# --- calibration lists ---------------------------------------------------------------------


def write_images(folder, n: int) -> list[str]:  # noqa: ANN001
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        image, _ = make_scene(0, i, (64, 64))
        Image.fromarray(image).save(folder / f"img{i}.png")
        names.append(f"imgs/img{i}.png")
    return names


def test_calib_list_reads_paths_and_comments(tmp_path) -> None:  # noqa: ANN001
    names = write_images(tmp_path / "imgs", 3)
    lst = tmp_path / "list.txt"
    lst.write_text(f"# header\n{names[0]}\n\n{names[1]}  # trailing\n{names[2]}\n")
    paths = read_calib_list(lst, tmp_path)
    assert [p.name for p in paths] == ["img0.png", "img1.png", "img2.png"]
    assert read_calib_list(lst, tmp_path, limit=2) == paths[:2]


def test_calib_list_names_the_first_missing_file(tmp_path) -> None:  # noqa: ANN001
    names = write_images(tmp_path / "imgs", 2)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([names[0], "imgs/nope1.png", "imgs/nope2.png", names[1]]))
    with pytest.raises(DataError) as info:
        read_calib_list(lst, tmp_path)
    assert str(info.value) == (
        f"calibration list '{lst}' names '{tmp_path / 'imgs/nope1.png'}', which does not exist (2 of 4 missing); fix the list or "
        f"pass the data root it is relative to with --data-root (now '{tmp_path}')"
    )


def test_calib_list_warns_under_300(tmp_path, caplog) -> None:  # noqa: ANN001
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(write_images(tmp_path / "imgs", 2)))
    with caplog.at_level(logging.WARNING):
        paths = read_calib_list(lst, tmp_path)
    assert paths.too_few and len(paths) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"calibrating on 2 images from '{lst}': fewer than the recommended 300, ranges may be noisy"
    ]


CAMVID_LIST = Path(__file__).resolve().parents[2] / "calib" / "camvid_train_300.txt"


def test_shipped_camvid_list_has_300_distinct_train_images() -> None:
    lines = [ln for ln in CAMVID_LIST.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == len(set(lines)) == 300
    assert all(ln.startswith("train/") and ln.endswith(".jpg") for ln in lines)


def test_shipped_camvid_list_resolves_in_the_shared_camvid(camvid_root: Path) -> None:
    paths = read_calib_list(CAMVID_LIST, camvid_root)
    assert len(paths) == 300 and not paths.too_few
    assert all(p.is_file() and p.parent == camvid_root / "train" for p in paths)


# --- the calibrate command -------------------------------------------------------------------


@pytest.fixture()
def fp32_ckpt(tmp_path):  # noqa: ANN001, ANN201
    recipe = recipe_from_dict(
        {
            "name": "tiny",
            "data": {"format": "synthetic", "synthetic_size": [64, 64], "crop_size": [64, 64], "synthetic_num_train": 8},
            "model": {"width_mult": 0.35},
            "quant": {"calib_num_images": 4},
        }
    )
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "fp32.pt", model=build_model(num_classes=5, width_mult=0.35), recipe=recipe, classes=SYNTHETIC)
    return tmp_path / "fp32.pt"


def test_calibrate_command_refuses_a_missing_file(tmp_path, fp32_ckpt) -> None:  # noqa: ANN001
    lst = tmp_path / "list.txt"
    lst.write_text("imgs/missing.png\n")
    result = CliRunner().invoke(
        app, ["calibrate", str(fp32_ckpt), "--calib", str(lst), "--data-root", str(tmp_path), "--out", str(tmp_path / "q.pt")]
    )
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == (
        f"calibration list '{lst}' names '{tmp_path / 'imgs/missing.png'}', which does not exist (1 of 1 missing); fix the list or "
        f"pass the data root it is relative to with --data-root (now '{tmp_path}')"
    )
    assert not (tmp_path / "q.pt").exists()


def test_calibrate_command_writes_checkpoint_and_ranges(tmp_path, fp32_ckpt) -> None:  # noqa: ANN001
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(write_images(tmp_path / "imgs", 3)))
    out = tmp_path / "ptq.pt"
    args = ["calibrate", str(fp32_ckpt), "--calib", str(lst), "--data-root", str(tmp_path), "--method", "max", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # One whole line, however narrow the terminal (CliRunner's console is 80 columns wide).
    lines = result.output.splitlines()
    assert "warning: calibrated on 3 images, fewer than the recommended 300; ranges may be noisy" in lines
    assert lines[-1] == f"wrote {out} and {ranges_path(out)}"
    ckpt = load_checkpoint(out)
    assert ckpt["quant_meta"] == {"method": "max", "calib_list": str(lst), "num_images": 3, "qat": False}
    ranges = json.loads(ranges_path(out).read_text())
    model = model_from_checkpoint(ckpt)
    assert set(ranges["activations"]) == set(ckpt["quant"]["quantizers"])
    assert ranges["activations"]["encoder.input_q"] == pytest.approx(float(model.encoder.input_q.amax))
    # max calibration: the input range is the largest |x| of the three preprocessed images
    from edgeseg.data.io import read_image
    from edgeseg.data.preprocess import preprocess

    want = max(np.abs(preprocess(read_image(p))).max() for p in read_calib_list(lst, tmp_path))
    assert ranges["activations"]["encoder.input_q"] == pytest.approx(float(want), rel=1e-5)
