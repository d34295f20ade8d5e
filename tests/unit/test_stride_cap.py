"""benchmarks/stride_cap.py: the caps of a perfect head at each stride, on hand-made label maps."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.data.classes import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import stride_cap as sc  # noqa: E402


def test_a_one_pixel_line_vanishes_at_stride_4_and_a_cell_wide_band_survives() -> None:
    line = np.zeros((16, 16), dtype=np.int64)
    line[:, 5] = 1  # a quarter of each 4x4 cell it crosses: background wins every cell
    band = np.zeros((16, 16), dtype=np.int64)
    band[:, 4:8] = 1  # exactly one column of cells: bilinear weights stay above 1/2 inside it
    caps = sc.stride_caps([line], 2, [1, 4])
    assert caps[1] == [100.0, 100.0]
    assert caps[4][1] == 0.0 and caps[4][0] == pytest.approx(100 * 240 / 256)
    assert sc.stride_caps([band], 2, [4])[4] == [100.0, 100.0]
    # at stride 8 the band is half a cell: cell fractions 0.5 / 0.5 on one side, the argmax ties to class 0
    assert sc.stride_caps([band], 2, [8])[8][1] < 100.0


def test_void_pixels_are_not_scored_and_absent_classes_are_nan() -> None:
    mask = np.zeros((8, 8), dtype=np.int64)
    mask[:, :4] = IGNORE_INDEX
    caps = sc.stride_caps([mask, mask], 3, [1, 2])
    assert caps[2][0] == 100.0 and math.isnan(caps[2][2]) and math.isnan(caps[1][1])


def test_sizes_not_divisible_by_the_stride_keep_the_full_frame() -> None:
    mask = np.zeros((10, 13), dtype=np.int64)
    mask[5:, 6:] = 1
    caps = sc.stride_caps([mask], 2, [4])
    assert all(0.0 < v <= 100.0 for v in caps[4])


def test_json_over_its_own_recipe_is_refused_and_the_recipe_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.fsutil import WriteError

    recipe = tmp_path / "r.yaml"
    recipe.write_bytes((REPO / "recipes" / "camvid_mnv2_os16.yaml").read_bytes())
    before = recipe.read_bytes()
    monkeypatch.setattr(sys, "argv", ["stride_cap.py", str(recipe), "--json", str(recipe)])
    with pytest.raises(WriteError, match="would overwrite this command's input"):
        sc.main()
    assert recipe.read_bytes() == before
