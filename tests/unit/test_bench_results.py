"""Results file (schema, merge, errors), artifact metadata checks, device record and peak memory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeseg.bench.artifact import model_files, open_artifact
from edgeseg.bench.device import device_label, device_record, parse_tegra_release
from edgeseg.bench.memory import PeakMemory
from edgeseg.bench.results import BenchRow, ResultsError, load_results, merge_rows, save_results
from edgeseg.bench.runners import check_hint
from edgeseg.data.classes import SYNTHETIC
from edgeseg.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[2]
JETSON = REPO / "tests" / "fixtures" / "results" / "jetson_orin_tensorrt.json"


def _row(**changes: Any) -> BenchRow:
    row = load_results(JETSON)[0]
    return dataclasses.replace(row, row_id="", **changes)


def test_row_id_is_a_content_hash() -> None:
    a, b = _row(), _row()
    assert a.row_id == b.row_id and len(a.row_id) == 16
    assert _row(timestamp="2026-11-21T00:00:00+00:00").row_id != a.row_id


def test_save_appends_and_dedupes(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    save_results(path, [_row()])
    save_results(path, [_row()])  # the same measurement again: kept once
    rows = save_results(path, [_row(threads=4)])
    assert len(rows) == 2 and [r.threads for r in load_results(path)] == [None, 4]
    assert json.loads(path.read_text())["schema_version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
    assert len(merge_rows(rows, rows, [_row(batch=2)])) == 3


def test_fixture_round_trips() -> None:
    rows = load_results(JETSON)
    assert [BenchRow.from_dict(r.to_dict()) for r in rows] == rows
    assert rows[0].device["l4t"] == "36.4.3" and rows[0].runtime == "tensorrt"


NOT_RESULTS = "'{path}' is not an edgeseg results file (no schema_version/rows); pass a file written by 'edgeseg bench --json'"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"schema_version": 2, "rows": []}',
            "results file '{path}' has schema_version 2 but this edgeseg reads 1; "
            "re-run 'edgeseg bench' with this version or use the edgeseg that wrote it",
        ),
        ('{"rows": []}', NOT_RESULTS),
        ("[1, 2]", NOT_RESULTS),
        (
            '{"schema_version": 1, "rows": [',
            "results file '{path}' is not valid JSON (line 1); pass a file written by 'edgeseg bench --json'",
        ),
        (
            '{"schema_version": 1, "rows": [{"runtime": "x"}]}',
            "row 0 of '{path}' has no field 'artifact'; the file is damaged or not from edgeseg bench: re-run bench",
        ),
        (
            '{"schema_version": 1, "rows": [7]}',
            "row 0 of '{path}' is not an object; the results file is damaged: re-run 'edgeseg bench'",
        ),
    ],
)
def test_bad_results_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ResultsError) as info:
        load_results(path)
    assert str(info.value) == message.format(path=path)
    with pytest.raises(ResultsError) as info:  # appending reads the file first, and stops at the same line
        save_results(path, [_row()])
    assert str(info.value) == message.format(path=path)
    assert path.read_text() == content  # a file of another schema is never overwritten


def test_unknown_field_names_the_field(tmp_path: Path) -> None:
    doc = json.loads(JETSON.read_text())
    doc["rows"][1]["fps_mode"] = 1
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsError) as info:
        load_results(path)
    assert str(info.value) == f"row 1 of '{path}' has unknown field 'fps_mode'; it was written by another edgeseg: upgrade edgeseg"


def test_cli_reports_another_schema_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text('{"schema_version": 0, "rows": []}')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "edgeseg", "report", str(path), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: results file '{path}' has schema_version 0 but this edgeseg reads 1; "
        "re-run 'edgeseg bench' with this version or use the edgeseg that wrote it"
    ]
    assert not (tmp_path / "rep").exists()


def _artifact(tmp_path: Path, **meta: Any) -> Path:
    folder = tmp_path / "art"
    folder.mkdir(exist_ok=True)
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(b"\0" * 2000)
    base = {
        "schema_version": 1,
        "target": "openvino",
        "precision": "int8",
        "model_file": "model.xml",
        "input_name": "input",
        "output_name": "logits",
        "input_size": [64, 64],
        "output_stride": 16,
        "classes": SYNTHETIC.to_dict(),
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "data": {"format": "synthetic", "root": None, "split": "val"},
        "quant": {"method": "qat"},
        "source_checkpoint": "x.pt",
        "source_checkpoint_sha256": None,
        "recipe_hash": None,
        "tool_versions": {"edgeseg": "0.1.0"},
    }
    (folder / "meta.json").write_text(json.dumps({**base, **meta}))
    return folder


def test_artifact_size_hash_and_companions(tmp_path: Path) -> None:
    folder = _artifact(tmp_path)
    (folder / "model.engine").write_bytes(b"built on the device")
    (folder / "notes.txt").write_text("not the model")
    assert [p.name for p in model_files(folder, "model.xml")] == ["model.bin", "model.xml"]
    art = open_artifact(folder)
    assert art.model_size_mb == pytest.approx((2000 + 6) / 1e6) and art.quant_method == "qat" and art.input_size == (64, 64)
    (folder / "model.engine").write_bytes(b"rebuilt")  # derived files do not change the identity
    assert open_artifact(folder).sha256 == art.sha256
    (folder / "model.bin").write_bytes(b"\1" * 2000)
    assert open_artifact(folder).sha256 != art.sha256


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"schema_version": 9}, "schema_version 9, this edgeseg reads 1: upgrade edgeseg"),
        ({"schema_version": None}, "no schema_version: it was written by an older edgeseg; re-export"),
        ({"target": "openvnio"}, "did you mean 'openvino'"),
        ({"model_file": "other.xml"}, "lacks its model file 'other.xml'"),
        ({"model_file": "../model.xml"}, "'model_file' = '../model.xml' is invalid .*not a path"),
        ({"input_name": None, "__drop__": "input_name"}, "lacks 'input_name'"),
        ({"input_size": [64, 0]}, "'input_size' = \\[64, 0\\] is invalid"),
        ({"output_stride": 12}, "'output_stride' = 12 is invalid"),
        ({"normalization": {"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}}, "'normalization.std' = .* each > 0"),
        ({"normalization": {"mean": [float("nan")] * 3, "std": [0.5] * 3}}, "'normalization.mean'"),
        ({"classes": {"names": ["a"], "colors": [[0, 0]], "ignore_index": 255}}, "'classes' .*one \\[r, g, b\\]"),
    ],
)
def test_bad_artifacts(tmp_path: Path, meta: dict[str, Any], message: str) -> None:
    drop = meta.pop("__drop__", None)
    folder = _artifact(tmp_path, **meta)
    if drop:
        doc = json.loads((folder / "meta.json").read_text())
        del doc[drop]
        (folder / "meta.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=message):
        open_artifact(folder)


def test_missing_artifact_and_meta(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        open_artifact(tmp_path / "nope")
    assert (
        str(info.value) == f"artifact '{tmp_path / 'nope'}' does not exist; pass a folder written by 'edgeseg export' or a .pt checkpoint"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as info:
        open_artifact(tmp_path / "empty")
    assert str(info.value) == f"'{tmp_path / 'empty'}' has no meta.json, so it is not an edgeseg artifact; export it with 'edgeseg export'"
    with pytest.raises(ConfigError) as info:
        open_artifact(_artifact(tmp_path), output_stride=8)
    assert str(info.value) == (
        f"--output-stride/--input-size apply to .pt checkpoints only; '{tmp_path / 'art'}' was exported at a fixed size: re-export it"
    )


@pytest.mark.parametrize(
    ("hint", "target", "used"), [("bf16", "openvino", "bf16"), ("f16", "openvino", "f16"), ("f32", "onnx", None), ("f32", "jetson", None)]
)
def test_precision_hint_applies_to_openvino_only(hint: str, target: str, used: str | None) -> None:
    assert check_hint(hint, target) == used


def test_misspelt_precision_hint() -> None:
    with pytest.raises(ConfigError) as info:
        check_hint("bf61", "onnx")
    assert str(info.value) == "--precision-hint 'bf61' is not a runtime precision (did you mean 'bf16'?); use one of f32, bf16, f16"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025", "36.4.3"),
        ("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64, DATE: Tue Feb 20 04:46:31 UTC 2024", "35.5.0"),
        ("garbage", None),
    ],
)
def test_tegra_release(text: str, version: str | None) -> None:
    assert parse_tegra_release(text) == version


def test_device_record_here() -> None:
    record = device_record()
    assert set(record) >= {"cpu", "cores", "gpu", "os", "machine", "l4t", "jetpack", "tensorrt"}
    # Both sides of each platform difference are checked: the expected value is computed here.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert record["cores"] == cores
    tegra = Path("/etc/nv_tegra_release")
    assert record["l4t"] == (parse_tegra_release(tegra.read_text()) if tegra.is_file() else None)
    if record["l4t"] is None:
        assert record["jetpack"] is None
    jetson = load_results(JETSON)[0].device
    assert device_label(jetson) == "NVIDIA Jetson AGX Orin Developer Kit JetPack 6.2+b77"
    assert device_label({"cpu": "AMD EPYC", "cores": 2, "gpu": None, "os": "Debian 12"}) == "AMD EPYC (2 cores), Debian 12"


BLOCK_MIB = 200


def _rss_mib() -> float:
    """This process's resident memory now (MiB), read straight from the kernel: the reference."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="the exact peak needs Linux's /proc/self/clear_refs")
def test_peak_memory_sees_a_native_allocation() -> None:
    """The section's peak is what the allocation added, as the kernel counted it while the block was
    alive (measured here, side by side: no fixed MiB that another process's load could move)."""
    mem = PeakMemory()
    mem.start()
    before = _rss_mib()
    block = np.ones(BLOCK_MIB * 2**20 // 8)  # every page touched
    held = _rss_mib() - before  # what the block added, while it is alive
    del block
    peak = mem.peak_mb()
    assert held > BLOCK_MIB / 2, f"the reference saw only {held:.1f} MiB of the {BLOCK_MIB} MiB block"  # it sees the block
    assert peak == pytest.approx(held, rel=0.05)  # the peak after the block is gone is the block's
    mem.start()  # a new section does not inherit the old peak
    again = mem.peak_mb()
    assert again is not None and again < held / 2, f"the new section reports {again} MiB, the old block was {held:.1f} MiB"
