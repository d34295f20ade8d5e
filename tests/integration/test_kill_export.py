"""SIGKILL `edgeseg export` at random moments over a folder holding an older artifact: the folder is
always the whole old artifact or the whole new one (file hashes against both), nothing stray is
visible beside it, and the next export cleans what the killed one left. CTRL-C (SIGINT) during
export and bench exits 130 with one line and leaves the old files as they were."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
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
KILLS_PER_TARGET = 5  # at least 10 in all


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


def _building(out: Path, art: Path) -> bool:
    return any(p.name.startswith(f".{art.name}.") for p in out.iterdir())


def _timed_export(cmd: list[str], out: Path, art: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run one whole export; return (seconds until its temporary folder appeared, total seconds)."""
    start, building = time.perf_counter(), None
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None:
        if building is None and _building(out, art):
            building = time.perf_counter() - start
        time.sleep(0.01)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    total = time.perf_counter() - start
    return (building if building is not None else 0.5 * total), total


def _moments(rng: random.Random) -> list[tuple[str, float]]:
    """Stratified random moments over the whole export: 2 in start-up (imports, checkpoint), 6 in
    the build of the artifact folder, the last reaching past the end (the swap, completion)."""
    return [("start", (i + rng.random()) / 2) for i in range(2)] + [("build", (i + rng.random()) / 6) for i in range(6)]


def _delay(moment: tuple[str, float], build: float, total: float) -> float:
    phase, u = moment
    return build * u if phase == "start" else build + (1.05 * total - build) * u


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_sigkill_during_export_leaves_old_or_new_artifact(target: str, checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    old_ckpt, new_ckpt = checkpoints
    out, env = tmp_path / "export", _env(tmp_path)
    art = out / f"{target}_int8_os16"
    subprocess.run(_export(old_ckpt, target, out), check=True, env=env, capture_output=True, cwd=REPO)
    shutil.copytree(art, tmp_path / "old_copy")
    build, total = _timed_export(_export(new_ckpt, target, out), out, art, env)
    versions = Versions(art, tmp_path / "old_copy")

    rng, kills, mid_build, seen = random.Random(target), 0, 0, []
    moments = _moments(rng)
    # On a machine whose load changes (CI runs two test files at once), a timed moment can miss:
    # up to 8 more moments inside the build, until enough kills have landed there.
    extra = [("build", 0.8 * rng.random()) for _ in range(8)]
    while moments or (extra and (kills < KILLS_PER_TARGET or mid_build < 2)):
        moment = moments.pop(0) if moments else extra.pop(0)
        versions.restore_old()
        start = time.perf_counter()
        proc = subprocess.Popen(_export(new_ckpt, target, out), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = start + _delay(moment, build, total)
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            building = _building(out, art)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            mid_build += building
            if moment[0] == "build" and not building:  # start-up took longer than timed: move on
                build = min(deadline - start, 0.9 * total)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            scale = (time.perf_counter() - start) / total  # the machine got faster than when timed
            build, total = build * scale, total * scale
        seen.append(versions.state())
        assert _visible(out) == [art.name], f"stray entries beside the artifact: {_visible(out)}"
    assert kills >= KILLS_PER_TARGET, f"only {kills} kills landed before the export ended"
    assert mid_build >= 2, f"only {mid_build} kills landed while the artifact folder was being built"

    # The next export cleans what the killed ones left behind (hidden temporary folders).
    versions.restore_old()
    subprocess.run(_export(new_ckpt, target, out), check=True, env=env, capture_output=True, cwd=REPO)
    assert sorted(os.listdir(out)) == [art.name]
    assert versions.state() == "new"
    # Scratch files live inside the artifact's temporary folder, never in the system's (TMPDIR),
    # where nothing would clean up after a SIGKILL.
    leaked = [p.name for p in (tmp_path / "systmp").iterdir() if "edgeseg" in p.name or p.suffix == ".onnx" or p.name.startswith("tmp")]
    assert leaked == [], f"left in TMPDIR by killed exports: {leaked}"
    print(
        f"{target}: {kills} kills ({mid_build} while building) in {len(seen)} runs; export {total:.1f}s, build from {build:.1f}s; states {seen}"
    )


def _one_line(stderr: bytes) -> list[str]:
    text = stderr.decode()
    assert "Traceback" not in text, text[-2000:]
    return [line for line in text.splitlines() if line.strip() and "warn" not in line.lower()]


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_sigint_during_export_exits_130_and_keeps_old_artifact(target: str, checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    old_ckpt, new_ckpt = checkpoints
    out, env = tmp_path / "export", _env(tmp_path)
    art = out / f"{target}_int8_os16"
    subprocess.run(_export(old_ckpt, target, out), check=True, env=env, capture_output=True, cwd=REPO)
    before = _hashes(art)
    proc = subprocess.Popen(_export(new_ckpt, target, out), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.perf_counter() + 300
    while proc.poll() is None and time.perf_counter() < deadline and not any(p.name.startswith(f".{art.name}.") for p in out.iterdir()):
        time.sleep(0.01)
    time.sleep(random.Random(target).uniform(0.0, 1.0))  # somewhere inside the build
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the export finished before CTRL-C arrived")
    assert proc.returncode == 130, err.decode()[-2000:]
    lines = _one_line(err)
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines
    assert _hashes(art) == before
    assert sorted(os.listdir(out)) == [art.name]  # no half-built temporary folder either


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_sigint_during_bench_exits_130_and_keeps_results_file(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see when the runtime is loaded")
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
    cmd = _edgeseg("bench", str(art), "--json", str(results), "--runs", "1000000", "--warmup", "1", "--no-accuracy")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.perf_counter() + 300
    while proc.poll() is None and time.perf_counter() < deadline and "onnxruntime" not in _maps(proc.pid):
        time.sleep(0.05)
    time.sleep(2.0)  # into the timed runs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    lines = [line for line in _one_line(err) if not line.startswith("bench ")]  # the progress bar's last state
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines
    assert results.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted(["export", "results.json", "systmp"])
