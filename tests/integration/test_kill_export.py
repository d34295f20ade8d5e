"""SIGKILL `edgeseg export` at each event of an export over a folder holding an older artifact
(start-up, the temporary folder appearing, each file of the new artifact appearing in it, the
swap): the folder is always the whole old artifact or the whole new one (file hashes against
both), nothing stray is visible beside it, and the next export cleans what the killed one left.
CTRL-C (SIGINT) during export and bench exits 130 with one line and leaves the old files as they
were. Every signal follows an event the code writes or prints, never a guessed sleep: the tests
do the same on an idle machine and on a loaded one, and a wait that sees no event fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

# A tiny QAT checkpoint (INT8 export needs quantization ranges) in a few seconds of CPU.
SETTINGS = [
    "data.synthetic_num_train=8",
    "data.synthetic_num_val=2",
    "data.synthetic_size=[64,64]",
    "data.crop_size=[64,64]",
    "export.input_size=[64,64]",
    "model.width_mult=0.35",
    "train.epochs=1",
    "train.batch_size=4",
    "train.amp=false",
    "train.channels_last=false",
    "quant.enabled=true",
    "quant.epochs=1",
    "quant.max_iters=2",
    "quant.calib_num_images=4",
]
INTERRUPTED = "interrupted (CTRL-C): stopped; no file was left half-written"


def _env(tmp: Path) -> dict[str, str]:
    # A private TMPDIR: what the exports (or the libraries under them) leave there is checked.
    (tmp / "systmp").mkdir(exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp / "systmp")}


def _edgeseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeseg", *args]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two INT8-ready checkpoints of different seeds: the old artifact's source and the new one's."""
    root = tmp_path_factory.mktemp("ckpts")
    made = []
    for seed in (1, 2):
        out = root / f"seed{seed}"
        sets = [a for s in [*SETTINGS, f"train.seed={seed}"] for a in ("--set", s)]
        subprocess.run(
            _edgeseg("train", str(REPO / "recipes/smoke.yaml"), "--out", str(out), *sets),
            check=True,
            env=_env(root),
            capture_output=True,
            cwd=REPO,
        )
        made.append(out / "best.pt")
    return made[0], made[1]


def _export(ckpt: Path, target: str, out: Path) -> list[str]:
    return _edgeseg("export", str(ckpt), "--target", target, "--precision", "int8", "--out", str(out))


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stable_meta(folder: Path) -> dict[str, Any]:
    """meta.json without the step timings, which differ from one export to the next."""

    def drop(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != "seconds"}
        return [drop(v) for v in value] if isinstance(value, list) else value

    return drop(json.loads((folder / "meta.json").read_text()))


class Versions:
    """The old artifact (restored byte for byte before each kill) and a complete new one."""

    def __init__(self, art: Path, old_copy: Path) -> None:
        self.art, self.old_copy = art, old_copy
        self.old = _hashes(old_copy)
        self.new = _hashes(art)
        self.new_meta = _stable_meta(art)
        model = json.loads((art / "meta.json").read_text())["model_file"]
        assert self.old[model] != self.new[model] and self.old["meta.json"] != self.new["meta.json"]

    def restore_old(self) -> None:
        shutil.rmtree(self.art, ignore_errors=True)
        shutil.copytree(self.old_copy, self.art)

    def state(self) -> str:
        """'old' or 'new'; fails on anything else (a missing folder, a mix, a half file)."""
        assert self.art.is_dir(), f"{self.art} is missing after the kill: {sorted(os.listdir(self.art.parent))}"
        have = _hashes(self.art)
        if have == self.old:
            return "old"
        assert set(have) == set(self.new), f"files {sorted(have)} are neither the old {sorted(self.old)} nor the new set"
        mixed = [k for k in have if k != "meta.json" and have[k] != self.new[k]]
        assert not mixed, f"{mixed} are not the new artifact's (old: {[k for k in mixed if have[k] == self.old.get(k)]})"
        assert _stable_meta(self.art) == self.new_meta, "meta.json is not the new artifact's"
        return "new"


def _visible(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


Happened = Callable[[int, "int | None"], bool]  # (the child's pid, the old folder's inode) -> has it?


def _events(art: Path, files: list[str], model_file: str) -> list[tuple[str, Happened]]:
    """(name, happened) for each moment of an export, in their order.

    The child builds in its own temporary folder, which atomic_dir names after the artifact and
    the writer's pid. An event holds from its moment on: a file event from the moment the file
    appears in that folder (for 'writing', its temporary name counts) and after the swap too, so
    polling can notice an event late but never miss it, however loaded the machine.
    """

    def swapped(old: int | None) -> bool:
        return _inode(art) != old

    def has(name: str, writing: bool = False) -> Happened:
        def happened(pid: int, old: int | None) -> bool:
            for tmp in art.parent.glob(f".{art.name}.{pid}-*.tmp"):
                if (tmp / name).exists() or (writing and any(tmp.glob(f".{name}.*.tmp"))):
                    return True
            return swapped(old)

        return happened

    events: list[tuple[str, Happened]] = [
        ("start-up", lambda pid, old: True),
        ("building", lambda pid, old: any(art.parent.glob(f".{art.name}.{pid}-*.tmp")) or swapped(old)),
        (f"writing {model_file}", has(model_file, writing=True)),
    ]
    events += [(f"{name} written", has(name)) for name in files]
    return [*events, ("swapped", lambda pid, old: swapped(old))]


# Kills at these events land before the build is complete: the old artifact must be intact. At
# the later ones the child may already have swapped the new one in: either is right.
BEFORE_THE_SWAP = ("start-up", "building")


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_sigkill_during_export_leaves_old_or_new_artifact(
    target: str, checkpoints: tuple[Path, Path], tmp_path: Path, watch: Callable[..., Any]
) -> None:
    old_ckpt, new_ckpt = checkpoints
    out, env = tmp_path / "export", _env(tmp_path)
    art = out / f"{target}_int8_os16"
    subprocess.run(_export(old_ckpt, target, out), check=True, env=env, capture_output=True, cwd=REPO)
    shutil.copytree(art, tmp_path / "old_copy")
    subprocess.run(_export(new_ckpt, target, out), check=True, env=env, capture_output=True, cwd=REPO)
    versions = Versions(art, tmp_path / "old_copy")
    model_file = json.loads((art / "meta.json").read_text())["model_file"]
    # Each file of the new artifact is an event, in the order of their names (the build's order is
    # the exporter's business; every file appears before the swap).
    files = sorted(name for name in versions.new if "/" not in name)

    seen = []
    for name, happened in _events(art, files, model_file):
        versions.restore_old()
        old_inode = _inode(art)
        child = watch(_export(new_ckpt, target, out), env=env, cwd=REPO)
        child.wait_until(lambda: happened(child.proc.pid, old_inode), f"event '{name}' of the export")  # noqa: B023
        code = child.send(signal.SIGKILL)
        state = versions.state()
        seen.append(f"{name}: {state} (exit {code})")
        if name in BEFORE_THE_SWAP:
            assert (state, code) == ("old", -signal.SIGKILL), seen
        if name == "swapped":
            assert state == "new", seen
        assert code in (0, -signal.SIGKILL), "\n".join(child.lines[-20:])
        assert _visible(out) == [art.name], f"stray entries beside the artifact after '{name}': {_visible(out)}"

    # The next export cleans what the killed ones left behind (hidden temporary folders).
    versions.restore_old()
    subprocess.run(_export(new_ckpt, target, out), check=True, env=env, capture_output=True, cwd=REPO)
    assert sorted(os.listdir(out)) == [art.name]
    assert versions.state() == "new"
    # Scratch files live inside the artifact's temporary folder, never in the system's (TMPDIR),
    # where nothing would clean up after a SIGKILL.
    leaked = [p.name for p in (tmp_path / "systmp").iterdir() if "edgeseg" in p.name or p.suffix == ".onnx" or p.name.startswith("tmp")]
    assert leaked == [], f"left in TMPDIR by killed exports: {leaked}"
    print(f"{target}: {seen}")


# A log record of `edgeseg -v` (logging's "LEVEL name: message"), not one of the CLI's lines.
LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING) [\w.]+: ")


def _messages(lines: list[str]) -> list[str]:
    """The CLI's own stderr lines: no log records, library warnings or progress bar states."""
    return [
        ln
        for ln in lines
        if ln.strip() and not LOG_RECORD.match(ln) and "warn" not in ln.lower() and not ln.startswith(("bench ", "export "))
    ]


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_sigint_during_export_exits_130_and_keeps_old_artifact(
    target: str, checkpoints: tuple[Path, Path], tmp_path: Path, watch: Callable[..., Any]
) -> None:
    old_ckpt, new_ckpt = checkpoints
    out, env = tmp_path / "export", _env(tmp_path)
    art = out / f"{target}_int8_os16"
    subprocess.run(_export(old_ckpt, target, out), check=True, env=env, capture_output=True, cwd=REPO)
    before = _hashes(art)
    child = watch(_export(new_ckpt, target, out), env=env, cwd=REPO)
    # The build's temporary folder appearing: the model is yet to be exported into it.
    child.wait_until(lambda: any(out.glob(f".{art.name}.{child.proc.pid}-*.tmp")), "the temporary artifact folder")
    assert child.send(signal.SIGINT) == 130, "\n".join(child.lines[-20:])
    assert "Traceback" not in "\n".join(child.lines)
    assert _messages(child.lines) == [INTERRUPTED], child.lines
    assert _hashes(art) == before
    assert sorted(os.listdir(out)) == [art.name]  # no half-built temporary folder either


def test_sigint_during_bench_exits_130_and_keeps_results_file(
    checkpoints: tuple[Path, Path], tmp_path: Path, watch: Callable[..., Any]
) -> None:
    out, env = tmp_path / "export", _env(tmp_path)
    subprocess.run(_export(checkpoints[0], "onnx", out), check=True, env=env, capture_output=True, cwd=REPO)
    art, results = out / "onnx_int8_os16", tmp_path / "results.json"
    subprocess.run(
        _edgeseg("bench", str(art), "--json", str(results), "--runs", "3", "--warmup", "1", "--limit", "1"),
        check=True,
        env=env,
        capture_output=True,
        cwd=REPO,
    )
    before = results.read_bytes()
    cmd = _edgeseg("-v", "bench", str(art), "--json", str(results), "--runs", "1000000", "--warmup", "1", "--no-accuracy")
    child = watch(cmd, env=env, cwd=REPO)
    # bench logs the model's first inference, then times runs: a million of them, so the signal
    # lands in the timed loop however slow the machine is.
    child.wait_for_line(rf"{re.escape(str(art))}: loaded with onnxruntime \S+, first inference [\d.]+s$")
    assert child.send(signal.SIGINT) == 130, "\n".join(child.lines[-20:])
    assert "Traceback" not in "\n".join(child.lines)
    assert _messages(child.lines) == [INTERRUPTED], child.lines
    assert results.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted(["export", "results.json", "systmp"])
