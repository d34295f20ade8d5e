"""The bad-input catalogue: every case exits with code 2 and prints exactly its expected error line
(which names the file, key or value and the fix), no traceback, and leaves every existing file as
it was. Every command of the CLI has cases."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgeseg
from edgeseg import cli
from edgeseg.config import TrainConfig

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
    expect: str  # the whole error line after "error: ", with the placeholders of PLACEHOLDERS
    setup: Callable[[Path], None] | None = None
    code: int = 2
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    keep: list[str] = field(default_factory=list)  # files (relative to the case dir) that must not change
    absent: list[str] = field(default_factory=list)  # paths (relative to the case dir) that must not appear


# What the error lines hold that a case cannot spell out: paths of this run, and words that belong
# to edgeseg's version, the recipe schema or a library (a decoder's reason, the order of a set).
PLACEHOLDERS = {
    "version": re.escape(edgeseg.__version__),
    "train_keys": re.escape(", ".join(f.name for f in dataclasses.fields(TrainConfig))),
    "hash": "[0-9a-f]{16}",
    "lib": "[^;]+",
    "any": ".+",
}


def _expected(template: str, **paths: Path) -> str:
    """The regular expression of one whole error line: the template's text, paths and placeholders."""
    unknown = set(re.findall(r"\{([a-z_]+)\}", template)) - set(paths) - set(PLACEHOLDERS)
    assert not unknown, f"unknown placeholders {unknown} in {template!r}"
    pattern = re.escape(template)
    for name, value in [*((k, re.escape(str(v))) for k, v in paths.items()), *PLACEHOLDERS.items()]:
        pattern = pattern.replace(re.escape("{" + name + "}"), value)
    return pattern


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
    Case(
        "recipe missing",
        lambda c: ["train", str(c / "nope.yaml")],
        "recipe '{c}/nope.yaml' does not exist; pass a YAML file such as recipes/smoke.yaml",
    ),
    Case(
        "recipe unreadable (a folder)", lambda c: ["train", str(c)], "recipe '{c}' is a folder; pass a YAML file such as recipes/smoke.yaml"
    ),
    Case(
        "yaml syntax error",
        lambda c: ["train", _recipe(c, "train:\n  lr: [0.1\n")],
        "recipe '{c}/r.yaml' is not valid YAML at line 3; fix the syntax there",
    ),
    Case(
        "unknown key",
        lambda c: ["train", _recipe(c, "train:\n  lrr: 0.1\n")],
        "{c}/r.yaml: unknown recipe key 'train.lrr' (did you mean 'lr'?); valid keys here: {train_keys}",
    ),
    Case(
        "wrong type",
        lambda c: ["train", _recipe(c, "train:\n  epochs: many\n")],
        "{c}/r.yaml: recipe key 'train.epochs' must be of type int, got 'many'",
    ),
    Case(
        "output stride 12",
        lambda c: ["train", _recipe(c, "model:\n  output_stride: 12\n")],
        "{c}/r.yaml: recipe key 'model.output_stride' = 12 is invalid: use 8, 16 or 32",
    ),
    Case(
        "negative lr",
        lambda c: ["train", _recipe(c, "train:\n  lr: -0.1\n")],
        "{c}/r.yaml: recipe key 'train.lr' = -0.1 is invalid: must be positive",
    ),
    Case(
        "crop not a multiple of 8",
        lambda c: ["train", _recipe(c, "data:\n  crop_size: [100, 100]\n")],
        "{c}/r.yaml: recipe key 'data.crop_size' = [100, 100] is invalid: give [height, width], each in 32..8192 and a multiple of 8",
    ),
    Case(
        "override without =",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--set", "train.lr"],
        "{repo}/recipes/smoke.yaml: override 'train.lr' must look like key=value, e.g. train.lr=0.01",
    ),
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
        "data root '{c}/none' does not exist; pass the folder that holds the 'camvid' data",
    ),
    Case(
        "unknown data format",
        lambda c: ["eval", str(W["w"] / "run/best.pt"), "--format", "camvd", "--data", str(c)],
        "unknown data format 'camvd' (did you mean 'camvid'?); use one of camvid, folder, voc, cityscapes, synthetic",
    ),
    Case(
        "empty split",
        lambda c: _eval_camvid(W["w"], c),
        "no image/mask pairs found for CamVid split 'val' in {c}/camvid; check the data root, format and split",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: [p.unlink() for p in (r / "val").iterdir()]),
    ),
    Case(
        "truncated image",
        lambda c: _eval_camvid(W["w"], c),
        "image '{c}/camvid/val/img0.png' cannot be decoded ({lib}); it is corrupt, truncated or not an image: replace or remove it",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: _write(r / "val/img0.png", (r / "val/img0.png").read_bytes()[:60])),
    ),
    Case(
        "non-image file",
        lambda c: _eval_camvid(W["w"], c),
        "image '{c}/camvid/val/img1.png' cannot be decoded ({lib}); it is corrupt, truncated or not an image: replace or remove it",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: _write(r / "val/img1.png", "not an image")),
    ),
    Case(
        "mask of another size",
        lambda c: _eval_camvid(W["w"], c),
        "mask '{c}/camvid/valannot/img0.png' is 64x32 but its image is 64x64; masks must have their image's size",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: Image.fromarray(np.zeros((32, 64), np.uint8)).save(r / "valannot/img0.png")),
    ),
    Case(
        "mask value out of range",
        lambda c: _eval_camvid(W["w"], c),
        (
            "mask '{c}/camvid/valannot/img0.png' has value 40, outside the classes of this format (allowed: "
            "0-11, 255); fix the mask or choose the right data.format"
        ),
        setup=lambda c: _camvid_with(W["w"], c, lambda r: Image.fromarray(np.full((64, 64), 40, np.uint8)).save(r / "valannot/img0.png")),
    ),
    Case(
        "colour mask instead of indices",
        lambda c: _eval_camvid(W["w"], c),
        (
            "mask '{c}/camvid/valannot/img0.png' is a colour (RGB) image; masks must hold class indices in one "
            "channel (mode L or P): convert the colours to indices"
        ),
        setup=lambda c: _camvid_with(W["w"], c, lambda r: Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(r / "valannot/img0.png")),
    ),
    Case(
        "image without mask",
        lambda c: _eval_camvid(W["w"], c),
        "image '{c}/camvid/val/img1.png' has no mask with stem 'img1' in {c}/camvid/valannot; add it or remove the image",
        setup=lambda c: _camvid_with(W["w"], c, lambda r: (r / "valannot/img1.png").unlink()),
    ),
    Case(
        "not a checkpoint",
        lambda c: ["eval", str(c / "x.pt")],
        "'{c}/x.pt' is not a readable checkpoint (struct.error: unpack requires a buffer of 4 bytes); pass a .pt written by edgeseg",
        setup=lambda c: _write(c / "x.pt", "junk"),
    ),
    Case(
        "checkpoint without edgeseg keys",
        lambda c: ["eval", str(c / "x.pt")],
        "'{c}/x.pt' is not an edgeseg checkpoint (no format_version/arch); pass a .pt written by 'edgeseg train'",
        setup=lambda c: torch.save({"a": 1}, c / "x.pt"),
    ),
    Case(
        "checkpoint from a newer edgeseg",
        lambda c: ["eval", str(c / "x.pt")],
        "'{c}/x.pt' was written by edgeseg {version} (format 99); this is edgeseg {version} (format 1): upgrade edgeseg",
        setup=lambda c: _ckpt_with(W["w"], c / "x.pt", format_version=99),
    ),
    Case(
        "checkpoint of another class count",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o"), "--init", str(c / "x.pt"), "--qat", *TINY],
        (
            "checkpoint '{c}/x.pt': classes has 5 names but arch.num_classes is 7; it is damaged or not from "
            "edgeseg: pass another .pt or retrain"
        ),
        setup=lambda c: _ckpt_with(W["w"], c / "x.pt", num_classes=7),
    ),
    Case(
        "resume without last.pt",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o"), "--resume", *TINY],
        "--resume: '{c}/o/last.pt' does not exist; run without --resume to start",
    ),
    Case(
        "eval output stride 12",
        lambda c: ["eval", str(W["w"] / "run/best.pt"), "--output-stride", "12"],
        "--output-stride 12 is invalid; use 8, 16 or 32",
    ),
    Case(
        "calibration list with a missing file",
        lambda c: ["calibrate", str(W["w"] / "run/fp32.pt"), "--calib", str(c / "l.txt"), "--data-root", str(c), "--out", str(c / "p.pt")],
        (
            "calibration list '{c}/l.txt' names '{c}/missing.jpg', which does not exist (1 of 1 missing); fix "
            "the list or pass the data root it is relative to with --data-root (now '{c}')"
        ),
        setup=lambda c: _write(c / "l.txt", "missing.jpg\n"),
    ),
    Case(
        "unknown target",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "jetsn", "--out", str(c)],
        "unknown target 'jetsn' (did you mean 'jetson'?); use one of onnx, openvino, jetson, coreml",
    ),
    Case(
        "int8 export without ranges",
        lambda c: ["export", str(W["w"] / "run/fp32.pt"), "--target", "onnx", "--precision", "int8", "--out", str(c)],
        (
            "checkpoint '{w}/run/fp32.pt' has no INT8 ranges; run 'edgeseg calibrate {w}/run/fp32.pt --calib "
            "LIST --out ptq.pt' and export ptq.pt, or train with QAT (edgeseg train RECIPE --qat)"
        ),
    ),
    Case(
        "unknown precision",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "onnx", "--precision", "int4", "--out", str(c)],
        "--precision int4 is not supported by ONNX export; use fp32 or int8",
    ),
    Case(
        "bad input size",
        lambda c: ["info", str(REPO / "recipes/smoke.yaml"), "--input-size", "big"],
        "input size 'big' must look like HEIGHTxWIDTH, e.g. 360x480",
    ),
    Case(
        "artifact folder without meta.json",
        lambda c: ["bench", str(c), "--json", str(c / "r.json")],
        "'{c}' has no meta.json, so it is not an edgeseg artifact; export it with 'edgeseg export'",
    ),
    Case(
        "artifact of another schema",
        lambda c: ["bench", str(c / "a"), "--json", str(c / "r.json")],
        "'{c}/a/meta.json' has schema_version 99, this edgeseg reads 1: upgrade edgeseg",
        setup=lambda c: (shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "a"), _edit_json(c / "a/meta.json", schema_version=99)),
    ),
    Case(
        "artifact input size vs --input-size",
        lambda c: ["bench", str(W["w"] / "export/onnx_fp32_os16"), "--input-size", "64x64", "--json", str(c / "r.json")],
        (
            "--output-stride/--input-size apply to .pt checkpoints only; '{w}/export/onnx_fp32_os16' was "
            "exported at a fixed size: re-export it"
        ),
    ),
    Case(
        "TensorRT without a GPU",
        lambda c: ["bench", str(c / "j"), "--no-accuracy", "--json", str(c / "r.json")],
        (
            "cannot bench '{c}/j' here: TensorRT needs an NVIDIA GPU with tensorrt installed (JetPack's on a "
            'Jetson, or pip install "edgeseg[tensorrt]")'
        ),
        setup=lambda c: (shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "j"), _edit_json(c / "j/meta.json", target="jetson")),
    ),
    Case(
        "CoreML prediction off macOS",
        lambda c: ["bench", str(c / "m"), "--no-accuracy", "--json", str(c / "r.json")],
        "cannot bench '{c}/m' here: Core ML prediction needs macOS",
        setup=lambda c: (
            shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "m"),
            _edit_json(c / "m/meta.json", target="coreml", model_file="model.onnx"),
        ),
    ),
    Case(
        "results file of another schema",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        (
            "results file '{c}/r.json' has schema_version 99 but this edgeseg reads 1; re-run 'edgeseg bench' "
            "with this version or use the edgeseg that wrote it"
        ),
        setup=lambda c: _write(c / "r.json", json.dumps({"schema_version": 99, "rows": []})),
    ),
    Case(
        "bench runs 0",
        lambda c: ["bench", str(W["w"] / "export/onnx_fp32_os16"), "--runs", "0", "--json", str(c / "r.json")],
        "--runs 0 is too small; use 1 or more",
    ),
    Case(
        "check a non-ONNX file",
        lambda c: ["check", str(c / "x.onnx"), "--target", "jetson"],
        "'{c}/x.onnx' is not a readable ONNX model ({lib}); export it again",
        setup=lambda c: _write(c / "x.onnx", "junk"),
    ),
    Case(
        "pipeline bad output stride",
        lambda c: ["pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o"), "--output-strides", "8,12"],
        "output stride 12 is invalid; use 8, 16 and/or 32",
    ),
    Case(
        "output folder not writable",
        lambda c: ["eval", str(W["w"] / "run/best.pt"), "--json", str(c / "file/out.json")],
        "cannot write '{c}/file/out.json' (File exists); check the path and free space",
        setup=lambda c: _write(c / "file", "a plain file where a folder should be"),
        keep=["file"],
    ),
    Case(
        "disk full on write",
        lambda c: ["eval", str(W["w"] / "run/best.pt"), "--json", str(c / "old.json")],
        "disk full while writing '{c}/old.json'; free space and run again (the old file is untouched)",
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
UNPICKLE = (
    "'{c}/%s' holds Python objects other than tensors and plain data; edgeseg refuses to unpickle them (they could run code): "
    "pass a checkpoint written by edgeseg"
)
CASES += [
    Case(
        f"code-executing checkpoint: {name}",
        args,
        UNPICKLE % ("last.pt" if name == "train --resume" else "x.pt"),
        setup=lambda c, name=name: _evil_ckpt(W["w"], c / ("last.pt" if name == "train --resume" else "x.pt")),
        absent=["PWNED"],
    )
    for name, args in EVIL_COMMANDS.items()
]
CASES += [
    Case(
        "0-byte checkpoint",
        lambda c: ["eval", str(c / "x.pt")],
        "checkpoint '{c}/x.pt' is empty (0 bytes); it was not written completely: pass another .pt or retrain",
        setup=lambda c: _write(c / "x.pt", b""),
    ),
    Case(
        "NaN weights (eval)",
        lambda c: ["eval", str(c / "x.pt")],
        "'{c}/x.pt': weight 'encoder.features.0.0.weight' holds NaN or inf; the checkpoint is broken: retrain or use an earlier one",
        setup=lambda c: _nan_ckpt(W["w"], c / "x.pt"),
    ),
    Case(
        "NaN weights (export)",
        lambda c: ["export", str(c / "x.pt"), "--target", "onnx", "--precision", "fp32", "--out", str(c / "e")],
        "'{c}/x.pt': weight 'encoder.features.0.0.weight' holds NaN or inf; the checkpoint is broken: retrain or use an earlier one",
        setup=lambda c: _nan_ckpt(W["w"], c / "x.pt"),
    ),
]

BOMB = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefghijk", "bcdefghijkl"))


def _artifact_with(case: Path, edit: Callable[[Path], None]) -> list[str]:
    shutil.copytree(W["w"] / "export/onnx_fp32_os16", case / "a")
    edit(case / "a")
    return ["bench", str(case / "a"), "--no-accuracy", "--runs", "1", "--warmup", "0", "--json", str(case / "r.json")]


def _artifact_of(target: str) -> Callable[[Path], None]:
    """A setup: the world's ONNX artifact copied to CASE/a, its meta.json naming another target."""

    def setup(case: Path) -> None:
        _artifact_with(case, lambda a: _edit_json(a / "meta.json", target=target))

    return setup


def _jetson_bundle(meta: dict[str, object], **build: object) -> Callable[[Path], None]:
    """A setup: the world's ONNX artifact made a Jetson bundle at CASE/a (meta.json's target and
    `meta`, a build.json valid but for `build`)."""

    def setup(case: Path) -> None:
        _artifact_with(case, lambda a: _edit_json(a / "meta.json", target="jetson", **meta))
        shape = {k: [1, 3, 64, 64] for k in ("min", "opt", "max")}
        cfg = {"precision": "fp32", "onnx": {"10": "model.onnx", "11": "model.onnx"}, "workspace_gb": 2, "dla_core": None}
        _write(case / "a/build.json", json.dumps({**cfg, "inputs": {"input": shape}, **build}))

    return setup


def _row_with(case: Path, **changes: object) -> None:
    doc = json.loads((REPO / "tests/fixtures/results/x86_cpu_handmade.json").read_text())
    doc["rows"] = [{**doc["rows"][0], **changes}]
    _write(case / "r.json", json.dumps(doc))


def _smoke_run(case: Path, *extra: str) -> list[str]:
    return ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(case / "o"), *TINY, *extra]


CASES += [
    Case(
        "YAML alias bomb",
        lambda c: ["train", _recipe(c, BOMB)],
        "{c}/r.yaml: the recipe expands to more than 10000 values (YAML aliases?); write the values out",
    ),
    Case(
        "recursive YAML alias",
        lambda c: ["train", _recipe(c, "train: &t\n  x: *t\n")],
        (
            "{c}/r.yaml: recipe key 'train.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x' nests more than 20 levels (a "
            "recursive alias?); write plain values"
        ),
    ),
    Case(
        "date in a recipe",
        lambda c: ["train", _recipe(c, "name: 2024-01-01\n")],
        "{c}/r.yaml: recipe key 'name' is a date (datetime.date(2024, 1, 1)); recipes hold numbers, strings and lists: quote it",
    ),
    Case(
        "set in a recipe",
        lambda c: ["train", _recipe(c, "train: !!set {a, b}\n")],
        "{c}/r.yaml: recipe key 'train' is a set ({any}); recipes hold numbers, strings and lists: quote it",
    ),
    Case(
        "NaN learning rate",
        lambda c: ["train", _recipe(c, "train:\n  lr: .nan\n")],
        "{c}/r.yaml: recipe key 'train.lr' = nan is invalid: use a finite number",
    ),
    Case(
        "infinite weight decay",
        lambda c: ["train", _recipe(c, "train:\n  weight_decay: .inf\n")],
        "{c}/r.yaml: recipe key 'train.weight_decay' = inf is invalid: use a finite number",
    ),
    Case(
        "recipe not UTF-8",
        lambda c: ["train", str(c / "r.yaml")],
        "recipe '{c}/r.yaml' is not UTF-8 text; save it as UTF-8",
        setup=lambda c: _write(c / "r.yaml", "name: caf\xe9\n".encode("latin-1")),
    ),
    Case(
        "recipe over 1 MiB",
        lambda c: ["train", str(c / "r.yaml")],
        "recipe '{c}/r.yaml' is 1200000 bytes, over the 1 MiB a recipe may be; pass the YAML recipe",
        setup=lambda c: _write(c / "r.yaml", "# pad\n" * 200_000),
    ),
    Case(
        "NaN override",
        lambda c: _smoke_run(c, "--set", "train.lr=.nan"),
        "{repo}/recipes/smoke.yaml: recipe key 'train.lr' = nan is invalid: use a finite number",
    ),
    Case(
        "unknown loss",
        lambda c: _smoke_run(c, "--set", "train.loss=lovaz"),
        (
            "{repo}/recipes/smoke.yaml: recipe key 'train.loss' = 'lovaz' is invalid: use one of ce, ohem, "
            "balanced, lovasz, ce+lovasz, ohem+lovasz, balanced+lovasz (did you mean 'lovasz'?)"
        ),
    ),
    Case(
        "EMA decay 1",
        lambda c: _smoke_run(c, "--set", "train.ema=1.0"),
        "{repo}/recipes/smoke.yaml: recipe key 'train.ema' = 1.0 is invalid: use 0 (off) or a decay in (0, 1), e.g. 0.999",
    ),
    Case(
        "OHEM threshold 0",
        lambda c: _smoke_run(c, "--set", "train.ohem_thresh=0"),
        "{repo}/recipes/smoke.yaml: recipe key 'train.ohem_thresh' = 0.0 is invalid: use a probability in (0, 1], e.g. 0.7",
    ),
    Case(
        "empty train_splits",
        lambda c: _smoke_run(c, "--set", "data.train_splits=[]"),
        (
            "{repo}/recipes/smoke.yaml: recipe key 'data.train_splits' = [] is invalid: give a non-empty list of "
            "distinct split names, e.g. [train, val]"
        ),
    ),
    Case(
        "meta.json model_file outside the folder",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", model_file="../../etc/passwd")),
        (
            "'{c}/a/meta.json': 'model_file' = '../../etc/passwd' is invalid (Value error, must be a file name "
            "inside the artifact folder, not a path); re-export the artifact with this edgeseg"
        ),
    ),
    Case(
        "meta.json normalisation std 0",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", normalization={"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]})),
        (
            "'{c}/a/meta.json': 'normalization.std' = [0.2, 0.0, 0.2] is invalid (Value error, must be 3 finite "
            "numbers, each > 0); re-export the artifact with this edgeseg"
        ),
    ),
    Case(
        "meta.json input size 0",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", input_size=[0, 64])),
        (
            "'{c}/a/meta.json': 'input_size' = [0, 64] is invalid (Value error, must be [height, width], each in "
            "8..8192); re-export the artifact with this edgeseg"
        ),
    ),
    Case(
        "meta.json huge input size",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", input_size=[100000, 100000])),
        (
            "'{c}/a/meta.json': 'input_size' = [100000, 100000] is invalid (Value error, must be [height, "
            "width], each in 8..8192); re-export the artifact with this edgeseg"
        ),
    ),
    Case(
        "meta.json classes of the wrong type",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", classes="road,car")),
        (
            "'{c}/a/meta.json': 'classes' = 'road,car' is invalid (Input should be a valid dictionary or "
            "instance of ClassesMeta); re-export the artifact with this edgeseg"
        ),
    ),
    Case(
        "meta.json output stride 12",
        lambda c: _artifact_with(c, lambda a: _edit_json(a / "meta.json", output_stride=12)),
        (
            "'{c}/a/meta.json': 'output_stride' = 12 is invalid (Value error, use one of 8, 16, 32); re-export "
            "the artifact with this edgeseg"
        ),
    ),
    Case(
        "meta.json without schema_version",
        lambda c: _artifact_with(c, lambda a: (a / "meta.json").write_text(json.dumps({"target": "onnx"}))),
        "'{c}/a/meta.json' has no schema_version: it was written by an older edgeseg; re-export the artifact with this one",
    ),
    Case(
        "meta.json not UTF-8",
        lambda c: _artifact_with(c, lambda a: (a / "meta.json").write_bytes(b'{"target": "\xff"}')),
        "'{c}/a/meta.json' is not UTF-8 text; re-export the artifact",
    ),
    Case(
        "0-byte model file",
        lambda c: _artifact_with(c, lambda a: (a / "model.onnx").write_bytes(b"")),
        "'{c}/a/model.onnx' is empty (0 bytes); the artifact is damaged: re-export it",
    ),
    Case(
        "artifact path is a file",
        lambda c: ["bench", str(c / "f"), "--json", str(c / "r.json")],
        "'{c}/f' is neither an artifact folder nor a .pt checkpoint; pass a folder written by 'edgeseg export'",
        setup=lambda c: _write(c / "f", "x"),
    ),
    Case(
        "results row with NaN mIoU",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "row 0 of '{c}/r.json': field 'miou' = nan must be null or a percentage in [0, 100]; the file is damaged: re-run 'edgeseg bench'",
        setup=lambda c: _row_with(c, miou=float("nan")),
    ),
    Case(
        "results row with negative latency",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        (
            "row 0 of '{c}/r.json': field 'latency' = {'p50': -1.0, 'p90': 1.0} must map p50, p90, ... to "
            "finite milliseconds >= 0; the file is damaged: re-run 'edgeseg bench'"
        ),
        setup=lambda c: _row_with(c, latency={"p50": -1.0, "p90": 1.0}),
    ),
    Case(
        "meta.json io with an unknown input kind",
        lambda c: _artifact_with(
            c, lambda a: _edit_json(a / "meta.json", io={"input": "rgb", "layout": "NCHW", "output": "logits", "labels_dtype": None})
        ),
        "'{c}/a/meta.json': 'io.input' = 'rgb' is invalid (Input should be 'image' or 'tensor'); re-export the artifact with this edgeseg",
    ),
    Case(
        "meta.json io labels without their dtype",
        lambda c: _artifact_with(
            c, lambda a: _edit_json(a / "meta.json", io={"input": "image", "layout": "NCHW", "output": "labels", "labels_dtype": None})
        ),
        (
            "'{c}/a/meta.json': 'io' = {'input': 'image', 'layout': 'NCHW', 'output': 'labels', ... is invalid (Value error, "
            "labels_dtype is given exactly when output is 'labels'); re-export the artifact with this edgeseg"
        ),
    ),
    Case(
        "results row with text for verified",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "row 0 of '{c}/r.json': field 'verified' = 'yes' must be null or true/false; the file is damaged: re-run 'edgeseg bench'",
        setup=lambda c: _row_with(c, verified="yes"),
    ),
    Case(
        "results row with negative float convs",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "row 0 of '{c}/r.json': field 'float_convs' = -1 must be null or a whole number >= 0; the file is damaged: re-run 'edgeseg bench'",
        setup=lambda c: _row_with(c, float_convs=-1),
    ),
    Case(
        "results row with text for a number",
        lambda c: ["report", str(c / "r.json"), "--out", str(c / "rep")],
        "row 0 of '{c}/r.json': field 'model_size_mb' = 'big' must be a finite number >= 0; the file is damaged: re-run 'edgeseg bench'",
        setup=lambda c: _row_with(c, model_size_mb="big"),
    ),
    Case(
        "garbled pipeline.json",
        lambda c: ["pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o")],
        (
            "'{c}/o/pipeline.json' is not readable JSON; delete '{c}/o/pipeline.json' and run again (finished "
            "stages are re-checked by hash, not redone blindly)"
        ),
        setup=lambda c: _write(c / "o/pipeline.json", '{"train": {"recipe_hash": '),
        keep=["o/pipeline.json"],
    ),
    Case(
        "pipeline.json of the wrong shape",
        lambda c: ["pipeline", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "o")],
        (
            "'{c}/o/pipeline.json' has an unexpected entry 'train'; delete '{c}/o/pipeline.json' and run again "
            "(finished stages are re-checked by hash, not redone blindly)"
        ),
        setup=lambda c: _write(c / "o/pipeline.json", '{"train": ["not", "a", "mapping"]}'),
        keep=["o/pipeline.json"],
    ),
]

CASES += [
    Case(
        "check a 0-byte ONNX",
        lambda c: ["check", str(c / "m.onnx"), "--target", "jetson"],
        "ONNX file '{c}/m.onnx' is empty (0 bytes); export it again",
        setup=lambda c: _write(c / "m.onnx", b""),
    ),
    Case(
        "check a folder that is no artifact",
        lambda c: ["check", str(c), "--target", "jetson"],
        "'{c}' is a folder without meta.json; pass an .onnx file or an artifact folder written by 'edgeseg export'",
    ),
    Case(
        "check an OpenVINO artifact",
        lambda c: ["check", str(c / "a")],
        (
            "'{c}/a' is an artifact of target openvino; 'edgeseg check' applies TensorRT's rules: pass a Jetson "
            "bundle (export --target jetson), an ONNX artifact or an .onnx file"
        ),
        setup=_artifact_of("openvino"),
    ),
    Case(
        "check a Jetson bundle without build.json",
        lambda c: ["check", str(c / "a")],
        "'{c}/a' has no build.json, so it is not a Jetson bundle; re-export the bundle with 'edgeseg export CHECKPOINT --target jetson'",
        setup=_artifact_of("jetson"),
    ),
    Case(
        "check a Jetson bundle whose meta.json names no TensorRT major",
        lambda c: ["check", str(c / "a")],
        "'{c}/a/meta.json' names no TensorRT major (tensorrt.trt_version 10 or 11); pass --trt-version or re-export the bundle",
        setup=_jetson_bundle({"tensorrt": {"trt_version": 9}}),
    ),
    Case(
        "check a Jetson bundle for DLA core 5",
        lambda c: ["check", str(c / "a")],
        (
            "'{c}/a/build.json' has dla_core 5, not a Jetson DLA core (0 or 1); re-export the bundle with 'edgeseg "
            "export CHECKPOINT --target jetson'"
        ),
        setup=_jetson_bundle({"tensorrt": {"trt_version": 10}}, dla_core=5),
    ),
    Case(
        "check DLA core 99",
        lambda c: ["check", str(W["w"] / "export/onnx_fp32_os16/model.onnx"), "--target", "jetson", "--dla", "99"],
        "--dla 99 is invalid; Jetson DLA cores are 0 or 1 (omit --dla for the GPU)",
    ),
    Case(
        "export DLA core 7",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "jetson", "--dla", "7", "--out", str(c / "e")],
        "--dla 7 is invalid; Jetson DLA cores are 0 or 1 (omit --dla for the GPU)",
    ),
    Case(
        "huge --input-size",
        lambda c: ["info", str(REPO / "recipes/smoke.yaml"), "--input-size", "100000x100000"],
        "input size '100000x100000' is over 8192 pixels a side; use a size the device runs, e.g. 720x1280",
    ),
    Case(
        "eval --json over its checkpoint",
        lambda c: ["eval", str(c / "x.pt"), "--json", str(c / "x.pt")],
        "--json '{c}/x.pt' would overwrite this command's input '{c}/x.pt'; write the output somewhere else",
        setup=lambda c: shutil.copy(W["w"] / "run/best.pt", c / "x.pt"),
    ),
    Case(
        "sensitivity --json over its checkpoint",
        lambda c: ["sensitivity", str(c / "x.pt"), "--json", str(c / "x.pt")],
        "--json '{c}/x.pt' would overwrite this command's input '{c}/x.pt'; write the output somewhere else",
        setup=lambda c: shutil.copy(W["w"] / "run/best.pt", c / "x.pt"),
    ),
    Case(
        "calibrate --out over its checkpoint",
        lambda c: ["calibrate", str(c / "x.pt"), "--calib", str(REPO / "calib/camvid_train_300.txt"), "--out", str(c / "x.pt")],
        "--out '{c}/x.pt' would overwrite this command's input '{c}/x.pt'; write the output somewhere else",
        setup=lambda c: shutil.copy(W["w"] / "run/fp32.pt", c / "x.pt"),
    ),
    Case(
        "bench --json over the artifact's meta.json",
        lambda c: ["bench", str(c / "a"), "--json", str(c / "a/meta.json")],
        "--json '{c}/a/meta.json' would overwrite this command's input '{c}/a/meta.json'; write the output somewhere else",
        setup=lambda c: shutil.copytree(W["w"] / "export/onnx_fp32_os16", c / "a"),
    ),
    Case(
        "report --out replacing the folder of its results",
        lambda c: ["report", str(c / "rep/r.json"), "--out", str(c / "rep")],
        "--out '{c}/rep' would overwrite this command's input '{c}/rep/r.json'; write the output somewhere else",
        setup=lambda c: _write(c / "rep/r.json", (REPO / "tests/fixtures/results/x86_cpu_handmade.json").read_text()),
    ),
]

CASES += [
    Case(
        "sensitivity --max-class-drop -1",
        lambda c: ["sensitivity", str(W["w"] / "run/best.pt"), "--max-class-drop", "-1"],
        "--max-class-drop -1.0 is out of range; use IoU points in 0..100",
    ),
    Case(
        "sensitivity --output-stride 12",
        lambda c: ["sensitivity", str(W["w"] / "run/best.pt"), "--output-stride", "12"],
        "--output-stride 12 is invalid; use 8, 16 or 32",
    ),
    Case(
        "sensitivity --curve-images under --images",
        lambda c: ["sensitivity", str(W["w"] / "run/best.pt"), "--images", "8", "--curve-images", "4"],
        "--curve-images 4 is out of range; use 8..10000 (at least --images, which ranks the layers)",
    ),
    Case(
        "sensitivity --ranking garbled",
        lambda c: ["sensitivity", str(W["w"] / "run/best.pt"), "--ranking", str(c / "r.json")],
        "'{c}/r.json' is not readable JSON (UnicodeDecodeError); write it again with 'edgeseg sensitivity CKPT --json r.json'",
        setup=lambda c: _write(c / "r.json", b"\xff\xfe{garbled"),
        keep=["r.json"],
    ),
    Case(
        "sensitivity --json over its --ranking",
        lambda c: ["sensitivity", str(W["w"] / "run/best.pt"), "--ranking", str(c / "r.json"), "--json", str(c / "r.json")],
        "--json '{c}/r.json' would overwrite this command's input '{c}/r.json'; write the output somewhere else",
        setup=lambda c: _write(c / "r.json", "{}"),
        keep=["r.json"],
    ),
    Case(
        "export --float-regions fp8",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "jetson", "--float-regions", "fp8", "--out", str(c / "e")],
        "--float-regions fp8 is unknown; use fp16 (the default) or fp32",
        absent=["e"],
    ),
    Case(
        "report --sensitivity garbled",
        lambda c: [
            "report",
            str(REPO / "tests/fixtures/results/x86_cpu_handmade.json"),
            "--sensitivity",
            str(c / "s.json"),
            "--out",
            str(c / "rep"),
        ],
        "'{c}/s.json' is not readable JSON (JSONDecodeError); write it again with 'edgeseg sensitivity CKPT --json s.json'",
        setup=lambda c: _write(c / "s.json", '{"images": '),
        keep=["s.json"],
        absent=["rep"],
    ),
    Case(
        "report --out replacing the folder of its sensitivity file",
        lambda c: [
            "report",
            str(REPO / "tests/fixtures/results/x86_cpu_handmade.json"),
            "--sensitivity",
            str(c / "rep/s.json"),
            "--out",
            str(c / "rep"),
        ],
        "--out '{c}/rep' would overwrite this command's input '{c}/rep/s.json'; write the output somewhere else",
        setup=lambda c: _write(c / "rep/s.json", "{}"),
        keep=["rep/s.json"],
    ),
    Case(
        "artifact folder name held by a user's file",
        lambda c: ["export", str(W["w"] / "run/best.pt"), "--target", "onnx", "--precision", "fp32", "--out", str(c)],
        "'{c}/onnx_fp32_os16' exists and is not a folder edgeseg wrote; move it away or choose another --out",
        setup=lambda c: _write(c / "onnx_fp32_os16", "a user's file with the artifact's name"),
    ),
    Case(
        "--resume of a finished run",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "run"), "--resume", *TINY],
        "the run in '{c}/run' already finished (see {c}/run/summary.json); nothing to resume: use --out NEW to train again",
        setup=lambda c: shutil.copytree(W["w"] / "run", c / "run"),
    ),
    Case(
        "damaged run.json",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "run"), *TINY],
        "'{c}/run/run.json' is damaged; delete it (the checkpoints are kept) or use --out NEW",
        setup=lambda c: _write(c / "run/run.json", '{"recipe_hash": '),
        keep=["run/run.json"],
    ),
    Case(
        "another recipe into a run folder",
        lambda c: ["train", str(REPO / "recipes/smoke.yaml"), "--out", str(c / "run"), *TINY, "--set", "train.lr=0.07"],
        (
            "run folder '{c}/run' holds a run of another recipe (hash {hash}, this one {hash}); use --out NEW, "
            "or --force to train this recipe there"
        ),
        setup=lambda c: shutil.copytree(W["w"] / "run", c / "run"),
    ),
    Case(
        "bench of a code-executing checkpoint",
        lambda c: ["bench", str(c / "x.pt"), "--no-accuracy", "--json", str(c / "r.json")],
        UNPICKLE % "x.pt",
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


def test_catalogue_covers_every_command(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command of the app has cases (a new command without any fails here), every case has its
    own test id, and every expected line uses only the known placeholders."""
    import typer.main

    monkeypatch.setitem(W, "w", world)  # the arguments only (some copy the world into tmp_path); nothing runs
    commands = set()
    for i, case in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        commands.add(case.args(tmp_path / str(i))[0])
    assert commands == set(typer.main.get_command(cli.app).commands)  # type: ignore[attr-defined]
    assert len({c.name for c in CASES}) == len(CASES)
    for case in CASES:
        re.compile(_expected(case.expect, c=tmp_path, w=tmp_path, repo=REPO))


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
    expected = _expected(case.expect, c=tmp_path, w=world, repo=REPO)
    assert re.fullmatch(expected, errors[0].removeprefix("error: ")), f"{errors[0]}\n  expected: {case.expect}"
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
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CheckpointError" in err
    assert err.strip().splitlines()[-1] == (
        f"error: checkpoint '{world / 'nope.pt'}' does not exist; pass a .pt written by 'edgeseg train' or 'calibrate'"
    )


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
    # stderr: the progress bar's last state, then the warning. The console wraps lines at its width
    # (80 columns here), keeping every character: joined, the lines are the message again.
    warning = "".join(ln for ln in captured.err.splitlines() if not ln.startswith("calibrate "))
    assert warning == "warning: calibrated on 1 images, fewer than the recommended 300; ranges may be noisy", captured.err
    assert "".join(captured.out.splitlines()).endswith(f"wrote {tmp_path / 'p.pt'} and {tmp_path / 'p.ranges.json'}"), captured.out
    assert torch.load(tmp_path / "p.pt", map_location="cpu", weights_only=True)["quant_meta"]["num_images"] == 1
