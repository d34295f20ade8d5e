"""The bad-input catalogue: every case exits with code 2 and one error line that names the file,
key or value and the fix, prints no traceback, and leaves every existing file as it was."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeseg import cli

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--set",
    "data.synthetic_num_train=8",
    "--set",
    "data.synthetic_num_val=2",
    "--set",
    "data.synthetic_size=[64,64]",
    "--set",
    "data.crop_size=[64,64]",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=4",
    "--set",
    "quant.enabled=false",
]


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]
    expect: str  # a substring of the error line (case-insensitive)
    setup: Callable[[Path], None] | None = None
    code: int = 2
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    keep: list[str] = field(default_factory=list)  # files (relative to the case dir) that must not change
    absent: list[str] = field(default_factory=list)  # paths (relative to the case dir) that must not appear


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained checkpoint, a CamVid-layout data set and an exported ONNX artifact."""
    root = tmp_path_factory.mktemp("world")
    _run(["train", str(REPO / "recipes/smoke.yaml"), "--out", str(root / "run"), *TINY])
    cam = root / "camvid"
    for split in ("train", "val"):
        (cam / split).mkdir(parents=True)
        (cam / f"{split}annot").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(cam / split / f"img{i}.png")
            Image.fromarray(np.full((64, 64), 3, np.uint8)).save(cam / f"{split}annot" / f"img{i}.png")
    _run(["export", str(root / "run/best.pt"), "--target", "onnx", "--precision", "fp32", "--out", str(root / "export")])
    return root


def _run(argv: list[str]) -> None:
    old = sys.argv
    sys.argv = ["edgeseg", *argv]
    try:
        cli.main()
    except SystemExit as exc:
        assert not exc.code, f"setup command failed: {argv}"
    finally:
        sys.argv = old


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _ckpt_with(world: Path, dst: Path, **changes: object) -> None:
    ckpt = torch.load(world / "run/best.pt", map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key == "num_classes":
            ckpt["arch"]["num_classes"] = value
        else:
            ckpt[key] = value
    torch.save(ckpt, dst)


class _MakeDir:
    """Unpickling this calls os.mkdir(path): the marker of a checkpoint that ran code when read."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.mkdir, (self.path,))


def _evil_ckpt(world: Path, dst: Path) -> None:
    """A complete, valid edgeseg checkpoint plus one object whose unpickling creates a marker."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(world / "run/best.pt", map_location="cpu", weights_only=True)
    ckpt["note"] = _MakeDir(dst.parent / "PWNED")
    torch.save(ckpt, dst)


def _nan_ckpt(world: Path, dst: Path) -> None:
    ckpt = torch.load(world / "run/best.pt", map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = ckpt["model"][name].clone().fill_(float("nan"))
    torch.save(ckpt, dst)


def _camvid_with(world: Path, case: Path, fn: Callable[[Path], None]) -> None:
    shutil.copytree(world / "camvid", case / "camvid")
    fn(case / "camvid")


def _eval_camvid(world: Path, case: Path) -> list[str]:
    return ["eval", str(world / "run/best.pt"), "--data", str(case / "camvid"), "--format", "camvid"]


def _recipe(case: Path, text: str) -> str:
    path = case / "r.yaml"
    _write(path, text)
    return str(path)


W: dict[str, Path] = {}
CASES = [
    Case("recipe missing", lambda c: ["train", str(c / "nope.yaml")], "does not exist"),
    Case("recipe unreadable (a folder)", lambda c: ["train", str(c)], "is a folder"),
    Case("yaml syntax error", lambda c: ["train", _recipe(c, "train:\n  lr: [0.1\n")], "line"),
    Case("unknown key", lambda c: ["train", _recipe(c, "train:\n  lrr: 0.1\n")], "did you mean 'lr'"),
    Case("wrong type", lambda c: ["train", _recipe(c, "train:\n  epochs: many\n")], "train.epochs"),
    Case("output stride 12", lambda c: ["train", _recipe(c, "model:\n  output_stride: 12\n")], "use 8, 16 or 32"),
    Case("negative lr", lambda c: ["train", _recipe(c, "train:\n  lr: -0.1\n")], "must be positive"),
    Case("crop not a multiple of 8", lambda c: ["train", _recipe(c, "data:\n  crop_size: [100, 100]\n")], "multiple of 8"),
    Case("override without =", lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--set", "train.lr"], "key=value"),
    Case(
        "data root missing",
        lambda c: [
            "train",
            str(REPO / "recipes/smoke.yaml"),
            "--out",
            str(c / "o"),
            "--set",
            "data.format=camvid",
            "--set",
            f"data.root={c}/none",
        ],
        "does not exist",
    ),
    Case(
        "unknown data format",
        lambda c: ["eval", str(W["w"] / "run/best.pt"), "--format", "camvd", "--data", str(c)],
        "did you mean 'camvid'",
    ),
    Case(
        "empty split",
        lambda c: _eval_camvid(W["w"], c),
        "no image/mask pairs",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: [p.unlink() for p in (r / "val").iterdir()]),
    ),
    Case(
        "truncated image",
        lambda c: _eval_camvid(W["w"], c),
        "img0.png",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: _write(r / "val/img0.png", (r / "val/img0.png").read_bytes()[:60])),
    ),
    Case(
        "non-image file",
        lambda c: _eval_camvid(W["w"], c),
        "img1.png",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: _write(r / "val/img1.png", "not an image")),
    ),
    Case(
        "mask of another size",
        lambda c: _eval_camvid(W["w"], c),
        "masks must have their image's size",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: Image.fromarray(np.zeros((32, 64), np.uint8)).save(r / "valannot/img0.png")),
    ),
    Case(
        "mask value out of range",
        lambda c: _eval_camvid(W["w"], c),
        "value 40",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: Image.fromarray(np.full((64, 64), 40, np.uint8)).save(r / "valannot/img0.png")),
    ),
    Case(
        "colour mask instead of indices",
        lambda c: _eval_camvid(W["w"], c),
        "colour",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(r / "valannot/img0.png")),
    ),
    Case(
        "image without mask",
        lambda c: _eval_camvid(W["w"], c),
        "has no mask",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: (r / "valannot/img1.png").unlink()),
    ),
    Case("not a checkpoint", lambda c: ["eval", str(c / "x.pt")], "not a readable checkpoint", setup=lambda c: _write(c / "x.pt", "junk")),
    Case(
        "checkpoint without edgeseg keys",
        lambda c: ["eval", str(c / "x.pt")],
        "not an edgeseg checkpoint",
        setup=lambda c: torch.save({"a": 1}, c / "x.pt"),
    ),
    Case(
        "checkpoint from a newer edgeseg",
        lambda c: ["eval", str(c / "x.pt")],
        "upgrade edgeseg",
        setup=lambda c: _ckpt_with(W["w"], c / "x.pt", format_version=99),
    ),
    Case(
        "checkpoint of another class count",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o"), "--init", str(c / "x.pt"), "--qat", *TINY],
        "num_classes",
        setup=lambda c: _ckpt_with(W["w"], c / "x.pt", num_classes=7),
    ),
    Case(
        "resume without last.pt",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o"), "--resume", *TINY],
        "does not exist",
    ),
    Case("eval output stride 12", lambda c: ["eval", str(W["w"] / "run/best.pt"), "--output-stride", "12"], "use 8, 16 or 32"),
    Case(
        "calibration list with a missing file",
        lambda c: ["calibrate", str(W["w"] / "run/fp32.pt"), "--calib", str(c / "l.txt"), "--data-root", str(c), "--out", str(c / "p.pt")],
        "missing.jpg",
        setup=lambda c: _write(c / "l.txt", "missing.jpg\n"),
    ),
    Case(
        "unknown target", lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "jetsn", "--out", str(c)], "did you mean 'jetson'"
    ),
    Case(
        "int8 export without ranges",
        lambda c: ["export", str(W["w"] / "run/fp32.pt"), "--target", "onnx", "--precision", "int8", "--out", str(c)],
        "calibrate",
    ),
    Case(
        "unknown precision",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "onnx", "--precision", "int4", "--out", str(c)],
        "int4",
    ),
    Case("bad input size", lambda c: ["info", str(REPO / "recipes/smoke.yaml"), "--input-size", "big"], "HEIGHTxWIDTH"),
    Case("artifact folder without meta.json", lambda c: ["bench", str(c), "--json", str(c / "r.json")], "meta.json"),
    Case(
        "artifact of another schema",
        lambda c: ["bench", str(c / "a"), "--json", str(c / "r.json")],
        "schema",
        setup=lambda c: (shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "a"), _edit_json(c / "a/meta.json", schema_version=99)),
    ),
    Case(
        "artifact input size vs --input-size",
        lambda c: ["bench", str(W["w"] / "export/onnx_fp32_os16"), "--input-size", "64x64", "--json", str(c / "r.json")],
        "re-export",
    ),
    Case(
        "TensorRT without a GPU",
        lambda c: ["bench", str(c / "j"), "--no-accuracy", "--json", str(c / "r.json")],
        "tensorrt",
        setup=lambda c: (shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "j"), _edit_json(c / "j/meta.json", target="jetson")),
    ),
    Case(
        "CoreML prediction off macOS",
        lambda c: ["bench", str(c / "m"), "--no-accuracy", "--json", str(c / "r.json")],
        "macos",
        setup=lambda c: (
            shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "m"),
            _edit_json(c / "m/meta.json", target="coreml", model_file="model.onnx"),
        ),
    ),
    Case(
        "results file of another schema",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "schema",
        setup=lambda c: _write(c / "r.json", json.dumps({"schema_version": 99, "rows": []})),
    ),
    Case("bench runs 0", lambda c: ["bench", str(W["w"] / "export/onnx_fp32_os16"), "--runs", "0", "--json", str(c / "r.json")], "--runs"),
    Case(
        "check a non-ONNX file",
        lambda c: ["check", str(c / "x.onnx"), "--target", "jetson"],
        "x.onnx",
        setup=lambda c: _write(c / "x.onnx", "junk"),
    ),
    Case(
        "pipeline bad output stride",
        lambda c: ["pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o"), "--output-strides", "8,12"],
        "12",
    ),
    Case(
        "output folder not writable",
        lambda c: ["eval", str(W["w"] / "run/best.pt"), "--json", str(c / "file/out.json")],
        "file",
        setup=lambda c: _write(c / "file", "a plain file where a folder should be"),
        keep=["file"],
    ),
    Case(
        "disk full on write",
        lambda c: ["eval", str(W["w"] / "run/best.pt"), "--json", str(c / "old.json")],
        "disk full",
        setup=lambda c: _write(c / "old.json", '{"miou": 1}'),
        keep=["old.json"],
        patch=lambda mp: mp.setattr("edgeseg.fsutil.os.fsync", _enospc),
    ),
]

EVIL_COMMANDS = {
    "eval": lambda c: ["eval", str(c / "x.pt")],
    "info": lambda c: ["info", str(c / "x.pt")],
    "predict": lambda c: ["predict", str(c / "x.pt"), str(W["w"] / "camvid/val/img0.png"), "--out", str(c / "pred")],
    "export": lambda c: ["export", str(c / "x.pt"), "--target", "onnx", "--precision", "fp32", "--out", str(c / "exp")],
    "calibrate": lambda c: [
        "calibrate",
        str(c / "x.pt"),
        "--calib",
        str(REPO / "calib/camvid_train_300.txt"),
        "--data-root",
        str(c),
        "--out",
        str(c / "p.pt"),
    ],
    "train --init": lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o"), "--init", str(c / "x.pt"), "--qat", *TINY],
    "train --resume": lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c), "--resume", *TINY],
}
CASES += [
    Case(
        f"code-executing checkpoint: {name}",
        args,
        "refuses to unpickle",
        setup=lambda c, name=name: _evil_ckpt(W["w"], c / ("last.pt" if name == "train --resume" else "x.pt")),
        absent=["PWNED"],
    )
    for name, args in EVIL_COMMANDS.items()
]
CASES += [
    Case("0-byte checkpoint", lambda c: ["eval", str(c / "x.pt")], "empty (0 bytes)", setup=lambda c: _write(c / "x.pt", b"")),
    Case("NaN weights (eval)", lambda c: ["eval", str(c / "x.pt")], "NaN or inf", setup=lambda c: _nan_ckpt(W["w"], c / "x.pt")),
    Case(
        "NaN weights (export)",
        lambda c: ["export", str(c / "x.pt"), "--target", "onnx", "--precision", "fp32", "--out", str(c / "e")],
        "NaN or inf",
        setup=lambda c: _nan_ckpt(W["w"], c / "x.pt"),
    ),
]

BOMB = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefghijk", "bcdefghijkl"))


def _artifact_with(case: Path, edit: Callable[[Path], None]) -> list[str]:
    shutil.copytree(W["w"] / "export/onnx_fp32_os16", case / "a")
    edit(case / "a")
    return ["bench", str(case / "a"), "--no-accuracy", "--runs", "1", "--warmup", "0", "--json", str(case / "r.json")]


def _row_with(case: Path, **changes: object) -> None:
    doc = json.loads((REPO / "tests/fixtures/results/x86_cpu_handmade.json").read_text())
    doc["rows"] = [{**doc["rows"][0], **changes}]
    _write(case / "r.json", json.dumps(doc))


def _smoke_run(case: Path, *extra: str) -> list[str]:
    return ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(case / "o"), *TINY, *extra]


CASES += [
    Case("YAML alias bomb", lambda c: ["train", _recipe(c, BOMB)], "more than 10000 values"),
    Case("recursive YAML alias", lambda c: ["train", _recipe(c, "train: &t\n  x: *t\n")], "nests more than 20 levels"),
    Case("date in a recipe", lambda c: ["train", _recipe(c, "name: 2024-01-01\n")], "'name' is a date"),
    Case("set in a recipe", lambda c: ["train", _recipe(c, "train: !!set {a, b}\n")], "'train' is a set"),
    Case("NaN learning rate", lambda c: ["train", _recipe(c, "train:\n  lr: .nan\n")], "'train.lr' = nan"),
    Case("infinite weight decay", lambda c: ["train", _recipe(c, "train:\n  weight_decay: .inf\n")], "'train.weight_decay' = inf"),
    Case(
        "recipe not UTF-8",
        lambda c: ["train", str(c / "r.yaml")],
        "not UTF-8",
        setup=lambda c: _write(c / "r.yaml", "name: caf\xe9\n".encode("latin-1")),
    ),
    Case(
        "recipe over 1 MiB",
        lambda c: ["train", str(c / "r.yaml")],
        "over the 1 MiB",
        setup=lambda c: _write(c / "r.yaml", "# pad\n" * 200_000),
    ),
    Case("NaN override", lambda c: _smoke_run(c, "--set", "train.lr=.nan"), "'train.lr' = nan"),
    Case("unknown loss", lambda c: _smoke_run(c, "--set", "train.loss=lovaz"), "did you mean 'lovasz'"),
    Case("EMA decay 1", lambda c: _smoke_run(c, "--set", "train.ema=1.0"), "train.ema"),
    Case("OHEM threshold 0", lambda c: _smoke_run(c, "--set", "train.ohem_thresh=0"), "train.ohem_thresh"),
    Case("empty train_splits", lambda c: _smoke_run(c, "--set", "data.train_splits=[]"), "data.train_splits"),
    Case(
        "meta.json model_file outside the folder",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", model_file="../../etc/passwd")),
        "not a path",
    ),
    Case(
        "meta.json normalisation std 0",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", normalization={"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]})),
        "normalization.std",
    ),
    Case(
        "meta.json input size 0",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", input_size=[0, 64])),
        "input_size",
    ),
    Case(
        "meta.json huge input size",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", input_size=[100000, 100000])),
        "input_size",
    ),
    Case(
        "meta.json classes of the wrong type",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", classes="road,car")),
        "classes",
    ),
    Case(
        "meta.json output stride 12",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", output_stride=12)),
        "output_stride",
    ),
    Case(
        "meta.json without schema_version",
        lambda c: _artifact_with(c, lambda a: (a / "meta.json").write_text(json.dumps({"target": "onnx"}))),
        "older edgeseg",
    ),
    Case(
        "meta.json not UTF-8",
        lambda c: _artifact_with(c, lambda a: (a / "meta.json").write_bytes(b'{"target": "\xff"}')),
        "not UTF-8",
    ),
    Case(
        "0-byte model file",
        lambda c: _artifact_with(c, lambda a: (a / "model.onnx").write_bytes(b"")),
        "empty (0 bytes)",
    ),
    Case(
        "artifact path is a file",
        lambda c: ["bench", str(c / "f"), "--json", str(c / "r.json")],
        "neither an artifact folder",
        setup=lambda c: _write(c / "f", "x"),
    ),
    Case(
        "results row with NaN mIoU",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "'miou'",
        setup=lambda c: _row_with(c, miou=float("nan")),
    ),
    Case(
        "results row with negative latency",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "'latency'",
        setup=lambda c: _row_with(c, latency={"p50": -1.0, "p90": 1.0}),
    ),
    Case(
        "results row with text for a number",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "'model_size_mb'",
        setup=lambda c: _row_with(c, model_size_mb="big"),
    ),
    Case(
        "garbled pipeline.json",
        lambda c: ["pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o")],
        "pipeline.json' is not readable JSON",
        setup=lambda c: _write(c / "o/pipeline.json", '{"train": {"recipe_hash": '),
        keep=["o/pipeline.json"],
    ),
    Case(
        "pipeline.json of the wrong shape",
        lambda c: ["pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o")],
        "unexpected entry",
        setup=lambda c: _write(c / "o/pipeline.json", '{"train": ["not", "a", "mapping"]}'),
        keep=["o/pipeline.json"],
    ),
]

CASES += [
    Case(
        "check a 0-byte ONNX",
        lambda c: ["check", str(c / "m.onnx"), "--target", "jetson"],
        "empty (0 bytes)",
        setup=lambda c: _write(c / "m.onnx", b""),
    ),
    Case("check a folder", lambda c: ["check", str(c), "--target", "jetson"], "is a folder"),
    Case(
        "check DLA core 99",
        lambda c: ["check", str(W["w"] / "export/onnx_fp32_os16/model.onnx"), "--target", "jetson", "--dla", "99"],
        "--dla 99 is invalid",
    ),
    Case(
        "export DLA core 7",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "jetson", "--dla", "7", "--out", str(c / "e")],
        "--dla 7 is invalid",
    ),
    Case("huge --input-size", lambda c: ["info", str(REPO / "recipes/smoke.yaml"), "--input-size", "100000x100000"], "over 8192"),
    Case(
        "eval --json over its checkpoint",
        lambda c: ["eval", str(c / "x.pt"), "--json", str(c / "x.pt")],
        "would overwrite this command's input",
        setup=lambda c: shutil.copy(W["w"] / "run/best.pt", c / "x.pt"),
    ),
    Case(
        "calibrate --out over its checkpoint",
        lambda c: ["calibrate", str(c / "x.pt"), "--calib", str(REPO / "calib/camvid_train_300.txt"), "--out", str(c / "x.pt")],
        "would overwrite this command's input",
        setup=lambda c: shutil.copy(W["w"] / "run/fp32.pt", c / "x.pt"),
    ),
    Case(
        "bench --json over the artifact's meta.json",
        lambda c: ["bench", str(c / "a"), "--json", str(c / "a/meta.json")],
        "would overwrite this command's input",
        setup=lambda c: shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "a"),
    ),
    Case(
        "report --out replacing the folder of its results",
        lambda c: ["report", str(c / "rep/r.json"), "--out", str(c / "rep")],
        "would overwrite this command's input",
        setup=lambda c: _write(c / "rep/r.json", (REPO / "tests/fixtures/results/x86_cpu_handmade.json").read_text()),
    ),
]

CASES += [
    Case(
        "artifact folder name held by a user's file",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "onnx", "--precision", "fp32", "--out", str(c)],
        "is not a folder edgeseg wrote",
        setup=lambda c: _write(c / "onnx_fp32_os16", "a user's file with the artifact's name"),
    ),
    Case(
        "--resume of a finished run",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "run"), "--resume", *TINY],
        "already finished",
        setup=lambda c: shutil.copytree(W["w"] / "run", c / "run"),
    ),
    Case(
        "damaged run.json",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "run"), *TINY],
        "run.json' is damaged",
        setup=lambda c: _write(c / "run/run.json", '{"recipe_hash": '),
        keep=["run/run.json"],
    ),
    Case(
        "another recipe into a run folder",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "run"), *TINY, "--set", "train.lr=0.07"],
        "holds a run of another recipe",
        setup=lambda c: shutil.copytree(W["w"] / "run", c / "run"),
    ),
    Case(
        "bench of a code-executing checkpoint",
        lambda c: ["bench", str(c / "x.pt"), "--no-accuracy", "--json", str(c / "r.json")],
        "refuses to unpickle",
        setup=lambda c: _evil_ckpt(W["w"], c / "x.pt"),
        absent=["PWNED"],
    ),
]


def _enospc(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_catalogue_size() -> None:
    assert len(CASES) >= 80
    assert len({c.name for c in CASES}) == len(CASES)  # every case is its own test id


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    W["w"] = world
    if case.setup:
        case.setup(tmp_path)
    before_world, before_case = _digest(world), _digest(tmp_path)
    if case.patch:
        case.patch(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["edgeseg", *case.args(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "━" not in line]
    assert exc.value.code == case.code, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    assert case.expect.lower() in errors[0].lower(), errors[0]
    assert _digest(world) == before_world, "the command changed files it was given"
    after = _digest(tmp_path)
    for name, digest in before_case.items():
        assert after.get(name) == digest, f"{name} was changed or deleted"
    for name in case.absent:
        assert not (tmp_path / name).exists(), f"{name} appeared: reading the input ran code"


def test_verbose_shows_traceback(world: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["edgeseg", "--verbose", "eval", str(world / "nope.pt")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert "Traceback" in capsys.readouterr().err


def test_too_few_calibration_images_is_a_warning(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "l.txt").write_text("a.png\n")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "edgeseg",
            "calibrate",
            str(world / "run/fp32.pt"),
            "--calib",
            str(tmp_path / "l.txt"),
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "p.pt"),
        ],
    )
    try:
        cli.main()
    except SystemExit as exc:
        assert not exc.code
    captured = capsys.readouterr()
    assert "300" in captured.err + captured.out
    assert (tmp_path / "p.pt").exists()
