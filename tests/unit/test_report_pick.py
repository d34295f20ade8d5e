"""report: Pareto fronts per output stride, picks under latency budgets, the new columns, the
"not measured here" rows and the --baseline regression gate, on rows built by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeseg.bench.results import BenchRow, load_results, save_results
from edgeseg.cli import app
from edgeseg.errors import ConfigError
from edgeseg.report import build_report
from edgeseg.report.analysis import analyse
from edgeseg.report.gate import Tolerance, regressions
from edgeseg.report.pick import budget_lines, check_budgets, resolve_device, stride_lines

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "results"
CPU = FIXTURES / "x86_cpu_handmade.json"
JETSON = FIXTURES / "jetson_orin_tensorrt.json"
CLASSES = ("road", "pole", "sign")


def _row(runtime: str, precision: str, stride: int, miou: float, p50: float, **over: object) -> BenchRow:
    """A row of the handmade CPU file with these figures (pre 2 ms + post 3 ms per image)."""
    base = load_results(CPU)[0]
    target = {"torch": "torch", "onnxruntime": "onnx", "openvino": "openvino"}[runtime]
    fields = dict(
        runtime=runtime,
        target=target,
        precision=precision,
        precision_hint="f32" if runtime == "openvino" else None,
        quant_method="qat" if precision == "int8" else None,
        output_stride=stride,
        miou=miou,
        latency={"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50, "std": 0.1, "min": p50 * 0.9, "max": p50 * 1.4},
        preprocess_ms=2.0,
        postprocess_ms=3.0,
        per_class_iou=None,
        notes="",
        row_id="",
    )
    fields.update(over)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def _rows() -> list[BenchRow]:
    return [
        _row("torch", "fp32", 16, 70.0, 40.0),  # 0
        _row("openvino", "fp32", 16, 70.0, 20.0),  # 1 front at OS16
        _row("openvino", "int8", 16, 69.7, 8.0),  # 2 front at OS16
        _row("torch", "fp32", 8, 71.0, 120.0),  # 3 front at OS8
        _row("openvino", "fp32", 8, 71.0, 60.0),  # 4 front at OS8 (dominates 3)
        _row("openvino", "int8", 8, 69.6, 30.0),  # 5 front at OS8: OS16 INT8 (69.7, 8 ms) dominates it across strides
        _row("openvino", "int8", 32, 60.0, 4.0),  # 6 front at OS32
        _row("openvino", "fp32", 32, 60.0, 10.0),  # 7 dominated by 6
    ]


def test_pareto_front_is_per_output_stride() -> None:
    entries = analyse(_rows())
    assert [i for i, e in enumerate(entries) if e.pareto] == [1, 2, 4, 5, 6]  # 5 would be dominated in one front per device


def test_end_to_end_speedups_and_worst_class() -> None:
    iou_ref = dict(zip(CLASSES, (95.0, 30.0, 50.0)))
    iou_int8 = dict(zip(CLASSES, (95.5, 27.5, 49.0)))
    rows = _rows()
    rows[0] = dataclasses.replace(rows[0], per_class_iou=iou_ref, row_id="")
    rows[2] = dataclasses.replace(rows[2], per_class_iou=iou_int8, row_id="")
    e = analyse(rows)[2]
    assert e.end_to_end_ms == pytest.approx(8.0 + 2.0 + 3.0)
    assert e.speedup == pytest.approx(40.0 / 8.0) and e.runtime_speedup == pytest.approx(20.0 / 8.0)
    assert e.worst_class == ("pole", pytest.approx(-2.5))
    batch2 = dataclasses.replace(rows[2], batch=2, row_id="")
    assert analyse([batch2])[0].end_to_end_ms == pytest.approx(8.0 + 2 * 5.0)  # pre/post are per image


def test_budget_picks_by_hand() -> None:
    entries = analyse(_rows())
    (device, lines), *_ = budget_lines(entries, [5.0, 10.0, 14.0, 30.0, 70.0]).items()
    # end to end = p50 + 5 ms: OS32 INT8 9, OS16 INT8 13, OS16 FP32 OV 25, OS8 INT8 35, OS8 FP32 OV 65
    assert lines == [
        "≤ 5 ms: nothing fits; the fastest is OS32 INT8 (qat) OpenVINO (60.00 mIoU, 9.0 ms)",
        "≤ 10 ms: OS32 INT8 (qat) OpenVINO (60.00 mIoU, 9.0 ms)",
        "≤ 14 ms: OS16 INT8 (qat) OpenVINO (69.70 mIoU, 13.0 ms)",
        "≤ 30 ms: OS16 FP32 OpenVINO (70.00 mIoU, 25.0 ms)",  # the faster of the two 70.0 rows
        "≤ 70 ms: OS8 FP32 OpenVINO (71.00 mIoU, 65.0 ms)",
    ]
    near = stride_lines(entries)[device]
    assert near == [
        "OS8: FP32 OpenVINO (71.00 mIoU, 65.0 ms), within 0.5 mIoU of the stride's best (71.00)",
        "OS16: INT8 (qat) OpenVINO (69.70 mIoU, 13.0 ms), within 0.5 mIoU of the stride's best (70.00)",
        "OS32: INT8 (qat) OpenVINO (60.00 mIoU, 9.0 ms), within 0.5 mIoU of the stride's best (60.00)",
    ]


def test_budget_and_device_checks() -> None:
    assert check_budgets([40, 20, 40]) == [20, 40]
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"is not a latency; give milliseconds above 0"):
            check_budgets([bad])
    entries = analyse(load_results(CPU) + load_results(JETSON))
    assert resolve_device("jetson", entries).startswith("NVIDIA Jetson AGX Orin")
    with pytest.raises(ConfigError, match=r"--device 'raspberry' has no rows; the results hold: Intel"):
        resolve_device("raspberry", entries)
    with pytest.raises(ConfigError, match=r"--device 'i' matches several devices"):
        resolve_device("i", entries)


def _results(tmp_path: Path, name: str, rows: list[BenchRow]) -> Path:
    path = tmp_path / name
    save_results(path, rows)
    return path


def test_gate_passes_on_the_baseline_and_fails_on_worse_rows(tmp_path: Path) -> None:
    base = _rows()
    assert regressions(base, base, Tolerance()) == []
    worse = list(base)
    worse[2] = dataclasses.replace(base[2], miou=69.2, row_id="")  # 0.5 mIoU lost
    worse[6] = dataclasses.replace(base[6], latency={**base[6].latency, "p50": 5.2}, row_id="")  # 4 -> 5.2 ms: +30 %
    del worse[5]
    problems = regressions(base, worse, Tolerance(miou=0.3, latency=0.25))
    device = analyse(base)[0].device
    assert problems == [
        f"OS16 INT8 (qat) OpenVINO (openvino, {device}): mIoU 69.20 < baseline 69.70 - 0.3",
        f"OS8 INT8 (qat) OpenVINO (openvino, {device}): in the baseline, not in the results",
        f"OS32 INT8 (qat) OpenVINO (openvino, {device}): latency 0.520x its FP32 row, baseline 0.400x (+30 % > 25 %)",
    ]
    assert regressions(base, worse, Tolerance(miou=0.5, latency=0.3)) == problems[1:2]  # within both tolerances
    # a uniformly slower machine is no regression: ratios hold
    slower = [dataclasses.replace(r, latency={k: 2 * v for k, v in r.latency.items()}, row_id="") for r in base]
    assert regressions(base, slower, Tolerance()) == []


def test_gate_cli_exit_codes(tmp_path: Path) -> None:
    base = _results(tmp_path, "base.json", _rows())
    worse_rows = _rows()
    worse_rows[2] = dataclasses.replace(worse_rows[2], miou=60.0, row_id="")
    worse = _results(tmp_path, "worse.json", worse_rows)
    runner = CliRunner()
    ok = runner.invoke(app, ["report", str(base), "--out", str(tmp_path / "r1"), "--baseline", str(base)])
    assert ok.exit_code == 0 and "no regression against" in ok.output
    bad = runner.invoke(app, ["report", str(worse), "--out", str(tmp_path / "r2"), "--baseline", str(base), "--tolerance", "0.3"])
    text = " ".join(bad.output.split())
    assert bad.exit_code == 1 and "mIoU 60.00 < baseline 69.70 - 0.3" in text and "1 regression(s)" in text
    assert (tmp_path / "r2" / "report.md").is_file()  # the report is written before the gate decides
    wrong = runner.invoke(app, ["report", str(base), "--out", str(tmp_path / "r3"), "--baseline", str(base), "--tolerance", "-1"])
    assert isinstance(wrong.exception, ConfigError) and not (tmp_path / "r3").exists()  # main() prints it as one line, exit 2
    assert str(wrong.exception) == "--tolerance -1.0 is out of range; give mIoU points in 0..100, e.g. --tolerance 0.3"


def test_report_pick_section_and_columns(tmp_path: Path) -> None:
    rows = _rows()
    rows[2] = dataclasses.replace(rows[2], round_p50_ms=[7.5, 8.0, 8.75], load_s=0.42, peak_rss_mb=512.0, row_id="")
    md = build_report([_results(tmp_path, "r.json", rows)], tmp_path / "rep", budgets=[14])["report.md"].read_text()
    assert md.index("## Pick") < md.index("## Summary") < md.index("## Output stride 8")
    assert "- ≤ 14 ms: OS16 INT8 (qat) OpenVINO (69.70 mIoU, 13.0 ms)" in md
    line = next(ln for ln in md.splitlines() if "| 69.70 |" in ln).split(" | ")
    header = next(ln for ln in md.splitlines() if ln.startswith("| Pareto")).split(" | ")
    cell = dict(zip(header, line))
    assert cell["spread ms"] == "7.50–8.75" and cell["end-to-end ms"] == "13.00" and cell["vs own FP32"] == "2.50x"
    assert cell["vs torch"] == "5.00x" and cell["load s"] == "0.42" and cell["peak RSS MB"] == "512"
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("miou_vs_latency_*.png"))
    assert [p.split("_")[3] for p in pngs if p.startswith("miou_vs_latency_os")] == ["os16", "os32", "os8"]
    assert len(pngs) == 4  # the overview and one per stride


def test_not_measured_rows(tmp_path: Path) -> None:
    from edgeseg.export.meta import META_SCHEMA_VERSION, write_meta

    meta = {
        "schema_version": META_SCHEMA_VERSION,
        "target": "jetson",
        "precision": "int8",
        "model_file": "model.onnx",
        "input_name": "input",
        "output_name": "logits",
        "input_size": [64, 64],
        "output_stride": 16,
        "classes": {"names": list(CLASSES), "colors": [[0, 0, 0], [1, 1, 1], [2, 2, 2]], "ignore_index": 255},
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "data": {"format": "synthetic", "root": None, "split": "val"},
        "quant": None,
        "source_checkpoint": "x.pt",
        "source_checkpoint_sha256": "0" * 64,
        "recipe_hash": "abc",
        "tool_versions": {"edgeseg": "0.1.0"},
    }
    folder = tmp_path / "jetson_int8_os16"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    write_meta(folder, meta)
    results = _results(tmp_path, "r.json", _rows())
    md = build_report([results], tmp_path / "a", artifacts=[folder])["report.md"].read_text()
    assert "## Not measured here" in md
    assert "- OS16 INT8 TensorRT (jetson_int8_os16): not measured here; on a device with TensorRT: `edgeseg bench jetson_int8_os16" in md
    measured = dataclasses.replace(_rows()[2], artifact="/home/nvidia/jetson_int8_os16", target="jetson", runtime="tensorrt", row_id="")
    device_file = _results(tmp_path, "orin.json", [measured])
    md = build_report([results, device_file], tmp_path / "b", artifacts=[folder])["report.md"].read_text()
    assert "Not measured here" not in md


def test_qat_weights_in_float_split_the_qat_delta() -> None:
    """A QAT checkpoint run in float (bench --float-weights) is a reference row, never the FP32
    reference; the QAT INT8 line splits its Δ into fine-tuning and INT8."""
    from edgeseg.report.analysis import summary_lines

    rows = _rows()[:3]  # torch FP32 70.0, OpenVINO FP32 70.0, OpenVINO INT8 (qat) 69.7 at OS16
    qat_float = _row("torch", "fp32", 16, 69.9, 41.0, quant_method="qat weights")
    entries = analyse([qat_float, *rows])
    assert entries[0].reference is rows[0] and entries[3].reference is rows[0]  # the float-weights row is no reference
    assert entries[0].runtime_speedup == pytest.approx(40.0 / 41.0)  # against torch FP32, never against itself
    (lines,) = summary_lines(entries).values()
    assert "OS16 FP32 (qat weights) torch: -0.10 mIoU vs FP32 torch: what fine-tuning did, without INT8" in lines
    assert "OS16 INT8 (qat) OpenVINO: 5.0x faster than FP32 torch for -0.30 mIoU (QAT weights in float -0.10, INT8 on them -0.20)" in lines


def test_int8_class_losses_are_called_out_and_float_convs_named(tmp_path: Path) -> None:
    """A QAT row losing 2.5 IoU on 'sign' (mIoU barely moves) is called out; 0.9 on 'pole' is not;
    an INT8 row with 3 float convs says so in its label; the report carries both."""
    ref = _row("openvino", "fp32", 16, 60.0, 30.0, per_class_iou={"road": 90.0, "pole": 30.0, "sign": 60.0})
    qat = _row("openvino", "int8", 16, 59.8, 10.0, per_class_iou={"road": 91.0, "pole": 29.1, "sign": 57.5})
    mixed = _row("openvino", "int8", 16, 60.0, 11.0, per_class_iou={"road": 90.0, "pole": 30.0, "sign": 59.5}, float_convs=3)
    from edgeseg.report.analysis import class_losses, row_label

    entries = analyse([ref, qat, mixed])
    lines = class_losses(entries)
    assert len(lines) == 1 and lines[0].startswith("OS16 INT8 (qat) OpenVINO on ")
    assert lines[0].endswith("(openvino): sign -2.50 IoU vs FP32 OpenVINO")
    assert row_label(mixed) == "INT8 (qat) (3 float convs) OpenVINO"
    save_results(tmp_path / "r.json", [ref, qat, mixed])
    build_report([tmp_path / "r.json"], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "### Classes an INT8 row loses more than 1 IoU on" in text and "sign -2.50 IoU" in text
    assert "INT8 (qat) (3 float convs) OpenVINO" in text
