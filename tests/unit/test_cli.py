"""The CLI through Typer's CliRunner, and its error handling through `main` (exit code 2, one line)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgeseg.cli import app, main
from edgeseg.data.classes import SYNTHETIC
from edgeseg.data.dataset import EvalTransform
from edgeseg.data.synthetic import make_scene
from edgeseg.errors import ConfigError, DataError
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "smoke.yaml"
TINY_SET = [
    "data.synthetic_num_train=8", "data.synthetic_num_val=3", "data.synthetic_size=[64, 64]", "data.crop_size=[64, 64]",
    "train.batch_size=4", "train.epochs=1", "train.amp=false",
]  # fmt: skip

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_run")
    args = ["train", str(SMOKE), "--out", str(out), "--no-qat"] + [a for s in TINY_SET for a in ("--set", s)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'best.pt'}" in result.output.replace("\n", "")
    return out


def _miou_by_hand(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple[float, int]:
    ious = []
    for c in range(num_classes):
        union = ((pred == c) | (truth == c)).sum()
        if union:
            ious.append(((pred == c) & (truth == c)).sum() / union)
    return float(np.mean(ious) * 100), len(ious)


def test_train_writes_a_usable_checkpoint(run_dir: Path) -> None:
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert ckpt["recipe"]["data"]["synthetic_num_train"] == 8 and ckpt["recipe"]["train"]["epochs"] == 1
    assert ckpt["arch"]["width_mult"] == 0.35 and ckpt["iteration"] == 2
    assert not (run_dir / "qat.pt").exists()


def test_train_nproc_per_node_reruns_itself_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 3)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = ["train", str(SMOKE), "--out", str(tmp_path), "--nproc-per-node", "2", "--set", "train.epochs=1", "--resume", "--no-qat"]
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and not (tmp_path / "last.pt").exists()  # torchrun's exit code; nothing trained here
    assert calls == [
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "edgeseg", "train", str(SMOKE)]
        + ["--out", str(tmp_path), "--set", "train.epochs=1", "--resume", "--no-qat"]
    ]


@pytest.mark.parametrize("output_stride", [None, 8])
def test_eval_json_matches_a_hand_computed_miou(run_dir: Path, tmp_path: Path, output_stride: int | None) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", str(run_dir / "best.pt"), "--json", str(out)] + (["--output-stride", str(output_stride)] if output_stride else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # The table shows the JSON's numbers: the mIoU row carries the value written to the file.
    assert re.search(rf"│ mIoU\s+│\s+{report['miou']:.2f} │", result.output), result.output
    assert report["output_stride"] == (output_stride or 16)
    assert set(report) >= {"miou", "pixel_acc", "per_class_iou"}
    # Reference: the checkpoint's model on the 3 val scenes, mIoU over the concatenated pixels.
    model = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"), output_stride).eval()
    preds, truths = [], []
    for i in range(3):
        image, mask = make_scene(0, 1_000_000 + i, (64, 64))
        x, _ = EvalTransform(None)(image, mask)
        with torch.no_grad():
            preds.append(model(x[None]).argmax(1)[0].numpy())
        truths.append(mask)
    miou, present = _miou_by_hand(np.stack(preds), np.stack(truths), 5)
    assert report["miou"] == pytest.approx(miou, abs=1e-6)
    assert sum(v is not None for v in report["per_class_iou"].values()) == present


def test_info_prints_gmacs_for_each_output_stride(run_dir: Path) -> None:
    for source in (str(SMOKE), str(run_dir / "best.pt")):
        result = runner.invoke(app, ["info", source, "--input-size", "64x64"])
        assert result.exit_code == 0, result.output
        assert "GMACs" in result.output
        rows = [line for line in result.output.splitlines() if "64x64" in line]
        assert len(rows) == 3
        gmacs = [float(r.split("│")[-2]) for r in rows]
        assert gmacs[0] > gmacs[1] > gmacs[2] > 0  # OS 8, 16, 32


def test_predict_writes_mask_and_overlay_pngs(run_dir: Path, tmp_path: Path) -> None:
    images = []
    for i, folder in enumerate(("a", "b")):
        image, _ = make_scene(7, i, (64, 80))
        images.append(image)
        (tmp_path / folder).mkdir()
        Image.fromarray(image).save(tmp_path / folder / "scene.png")  # same stem twice
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(run_dir / "best.pt"), str(tmp_path / "a/scene.png"), str(tmp_path / "b/scene.png"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["scene_1_mask.png", "scene_1_overlay.png", "scene_mask.png", "scene_overlay.png"]
    model = model_from_checkpoint(load_checkpoint(run_dir / "best.pt")).eval()
    colors = np.asarray(SYNTHETIC.colors, np.float32)
    for image, name in zip(images, ("scene", "scene_1")):
        with Image.open(out / f"{name}_mask.png") as m:
            assert m.mode == "P" and m.size == (80, 64)
            mask = np.asarray(m)
            palette = np.asarray(m.getpalette()[: 3 * 5]).reshape(5, 3)
        np.testing.assert_array_equal(palette, colors)
        with torch.no_grad():
            expected = model(EvalTransform(None)(image, np.zeros(image.shape[:2], np.uint8))[0][None]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(mask, expected)
        blended = np.round(0.5 * image + 0.5 * colors[mask]).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_overlay.png")), blended)


# --- errors: `main` turns an EdgesegError into one red line and exit code 2 ---------------------


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["edgeseg", *args])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err.strip()
    return int(info.value.code), err


def _bad_image(tmp_path: Path) -> Path:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return path


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["train", "missing.yaml"], r"recipe 'missing\.yaml' does not exist"),
        (["train", str(SMOKE), "--set", "train.lrr=1"], r"unknown recipe key 'train\.lrr' \(did you mean 'lr'\?\)"),
        (["train", str(SMOKE), "--set", "model.output_stride=12"], r"'model\.output_stride' = 12 is invalid"),
        (["info", str(SMOKE), "--input-size", "64by64"], r"input size '64by64' must look like HEIGHTxWIDTH"),
        (["eval", "{tmp}/broken.jpg"], r"broken\.jpg' is not a readable checkpoint"),
        (["predict", "{run}/best.pt", "{tmp}/broken.jpg", "--out", "{tmp}/o"], r"image '.*broken\.jpg' cannot be decoded"),
        (["predict", "{run}/best.pt", "{tmp}/nothere.png", "--out", "{tmp}/o"], r"image '.*nothere\.png' does not exist"),
        (["eval", "{run}/best.pt", "--output-stride", "12"], r"--output-stride 12 is invalid; use 8, 16 or 32"),
    ],
)
def test_errors_exit_2_with_one_line(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], pattern: str
) -> None:
    _bad_image(tmp_path)
    args = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    code, err = _main(monkeypatch, capsys, *args)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err


def test_usage_error_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(monkeypatch, capsys, "train", str(SMOKE), "--no-such-option")
    assert code == 2 and err == "error: No such option: --no-such-option (see 'edgeseg train --help')", err


def test_app_alone_raises_the_error_type(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        app(["train", "missing.yaml"], standalone_mode=False)
    assert str(info.value) == "recipe 'missing.yaml' does not exist; pass a YAML file such as recipes/smoke.yaml"
    bad = _bad_image(tmp_path)
    with pytest.raises(DataError) as info:
        app(["predict", str(run_dir / "best.pt"), str(bad), "--out", str(tmp_path / "o")], standalone_mode=False)
    assert re.fullmatch(rf"image '{re.escape(str(bad))}' cannot be decoded \(.+\); .+", str(info.value)), str(info.value)
    # Every image is read before --out is created: a bad input leaves no folder behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg"]


def test_console_script_entry_point_exit_code(tmp_path: Path) -> None:
    """The real process: `python -m edgeseg` prints one line on stderr and exits with 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgeseg", "train", str(tmp_path / "nope.yaml")], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: recipe '{tmp_path / 'nope.yaml'}' does not exist; pass a YAML file such as recipes/smoke.yaml\n"
    assert proc.stdout == ""
