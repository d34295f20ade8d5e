"""report: Pareto fronts, FP32 references and every section, from hand-written result files."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from edgeseg.bench.results import ResultsError, load_results
from edgeseg.errors import CheckpointError
from edgeseg.report import build_report
from edgeseg.report.analysis import analyse, pareto_front, row_label

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "results"
JETSON = FIXTURES / "jetson_orin_tensorrt.json"
CPU = FIXTURES / "x86_cpu_handmade.json"


def test_pareto_front_by_hand() -> None:
    points = [
        (70.0, 40.0),  # 0: dominated by 2 (same mIoU, faster)
        (69.0, 9.0),  # 1: dominated by 3
        (70.0, 25.0),  # 2: front
        (69.8, 8.0),  # 3: front
        (71.0, 120.0),  # 4: front (best mIoU)
        (65.0, 5.0),  # 5: front (fastest)
        (69.8, 8.0),  # 6: equal to 3: neither dominates the other
        (64.0, 5.0),  # 7: dominated by 5 (same latency, lower mIoU)
    ]
    assert pareto_front(points) == [False, False, True, True, True, True, True, False]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [True]


def test_analysis_of_the_handmade_cpu_set() -> None:
    entries = analyse(load_results(CPU))
    # known by construction (tests/fixtures/results/README.md): rows 2, 3, 4, 7, 8, 9
    assert [i for i, e in enumerate(entries) if e.pareto] == [2, 3, 4, 7, 8, 9]
    torch16, ort16, ov16, ov_bf16, qat16, nncf16, _, torch8, qat8, qat32 = entries
    assert qat16.reference is torch16.row and qat16.same_device_reference
    assert qat16.delta_miou == pytest.approx(-0.2) and qat16.speedup == pytest.approx(40 / 8)
    assert nncf16.delta_miou == pytest.approx(-1.0)
    assert qat8.reference is torch8.row and qat8.speedup == pytest.approx(120 / 30)
    assert qat32.reference is None and qat32.delta_miou is None  # no FP32 row at OS32
    assert torch16.reference is torch16.row and torch16.delta_miou == 0
    assert all(e.reference is not ov_bf16.row for e in entries)  # FP32 run in bf16 is no reference
    assert row_label(ov_bf16.row) == "FP32 (bf16 exec) OpenVINO" and row_label(qat16.row) == "INT8 (qat) OpenVINO"


def test_reference_falls_back_to_runtimes_and_other_devices() -> None:
    cpu = load_results(CPU)
    no_torch = [r for r in cpu if r.runtime != "torch"]
    entries = analyse(no_torch)
    qat16 = next(e for e in entries if e.row.quant_method == "qat" and e.row.output_stride == 16 and e.row.runtime == "openvino")
    assert qat16.reference is not None and qat16.reference.runtime == "onnxruntime"  # first onnxruntime/OpenVINO FP32 row
    jetson = analyse(load_results(JETSON) + cpu)[:3]
    for e in jetson:
        assert e.reference is not None and e.reference.runtime == "torch" and not e.same_device_reference and e.speedup is None
    assert jetson[0].delta_miou == pytest.approx(69.6 - 70.0)


def test_report_renders_every_section(tmp_path: Path) -> None:
    written = build_report([JETSON, CPU, JETSON], tmp_path / "report")  # the repeated file merges away
    md = written["report.md"].read_text()
    for heading in (
        "# edgeseg report",
        "## Summary",
        "## Output stride 8",
        "## Output stride 16",
        "## Output stride 32",
        "## Plots",
        "## Notes",
    ):
        assert heading in md
    assert "### NVIDIA Jetson AGX Orin Developer Kit JetPack 6.2+b77" in md
    assert "- OS16 INT8 (qat) OpenVINO: 5.0x faster than FP32 torch for -0.20 mIoU" in md
    assert "- OS16 INT8 (qat) TensorRT: -0.40 mIoU vs FP32 torch on Intel" in md
    assert "13 measurements on 2 device(s)" in md
    tables = re.findall(r"^\| Pareto \|.*$", md, re.MULTILINE)
    assert len(tables) == 3
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| ★") or ln.startswith("|  |")]
    assert len(table_rows) == 13 and sum(ln.startswith("| ★") for ln in table_rows) == 6 + 3  # CPU front + all three Jetson rows
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    # an overview per device (every stride) and one plot per device and stride: CPU OS 8/16/32, Jetson OS 8/16
    assert sum(i.startswith("miou_vs_latency_") and not i.startswith("miou_vs_latency_os") for i in images) == 2
    assert sorted(i.split("_")[3] for i in images if i.startswith("miou_vs_latency_os")) == ["os16", "os16", "os32", "os8", "os8"]
    assert sum(i.startswith("latency_") for i in images) == 2
    assert sorted(i for i in images if i.startswith("per_class")) == [
        "per_class_iou_os16_camvid_val.png",
        "per_class_iou_os8_camvid_val.png",
    ]
    for name in images:
        with Image.open(tmp_path / "report" / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 150
    page = written["report.html"].read_text()
    assert page.count("<table>") == 3 and page.count("<img ") == len(images) and "&lt;" not in md
    with open(written["results.csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 13 and {r["device"] for r in rows} == {
        "NVIDIA Jetson AGX Orin Developer Kit JetPack 6.2+b77",
        "Intel(R) Core(TM) i7-1185G7 @ 3.00GHz (8 cores), Ubuntu 24.04.1 LTS (Linux 6.8.0)",
    }
    by_id = {r["row_id"]: r for r in rows}
    for row in load_results(JETSON) + load_results(CPU):  # every row's per-class IoU, as its file has it
        for name, iou in (row.per_class_iou or {}).items():
            cell = by_id[row.row_id][f"iou_{name}"]
            assert (float(cell) if cell else None) == iou, (row.row_id, name, cell)
    assert sum(r["pareto"] == "True" for r in rows) == 9
    assert len(load_results(written["results.json"])) == 13


def test_rows_without_accuracy_or_samples_still_render(tmp_path: Path) -> None:
    rows = [
        dataclasses.replace(r, row_id="", miou=None, pixel_acc=None, per_class_iou=None, latency_samples_ms=[])
        for r in load_results(JETSON)
    ]
    from edgeseg.bench.results import save_results

    save_results(tmp_path / "lat.json", rows)
    md = build_report([tmp_path / "lat.json"], tmp_path / "out")["report.md"].read_text()
    assert "no FP32 reference row with mIoU" in md and "no latency samples" in md and "| ★" not in md


def test_report_refuses_other_schemas_and_empty_input(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"schema_version": 2, "rows": []}')
    with pytest.raises(ResultsError) as info:
        build_report([CPU, other], tmp_path / "out")
    assert str(info.value) == (
        f"results file '{other}' has schema_version 2 but this edgeseg reads 1; "
        "re-run 'edgeseg bench' with this version or use the edgeseg that wrote it"
    )
    empty = tmp_path / "empty.json"
    empty.write_text('{"schema_version": 1, "rows": []}')
    with pytest.raises(ResultsError) as info:
        build_report([empty], tmp_path / "out2")
    assert str(info.value) == f"no result rows in {empty}; run 'edgeseg bench ... --json FILE' first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.json", "other.json"]  # no report folder, not even a half one


def test_report_overwrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "r"
    build_report([JETSON], out)
    first = (out / "report.md").read_text()
    shutil.copy(CPU, tmp_path / "cpu.json")
    build_report([JETSON, tmp_path / "cpu.json"], out)
    assert (out / "report.md").read_text() != first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _sensitivity_file(path: Path, stride: int, layers: list[tuple[str, float]]) -> Path:
    """A hand-made `edgeseg sensitivity --json` file: FP32 60, INT8 57, the layers by gain, a 2-point curve."""
    scores = [{"name": n, "convs": [n], "miou": 57.0 + g, "gain": g, "per_class_iou": {"a": 50.0}} for n, g in layers]
    curve = [
        {"k": 1, "miou": 59.0, "layers": [layers[0][0]]},  # a file from before per-class curves: no class named
        {"k": 2, "miou": 59.8, "per_class_iou": {"a": 51.5, "b": 69.0}, "layers": [layers[0][0], layers[1][0]]},
    ]
    data = {
        "images": 8, "float_miou": 60.0, "int8_miou": 57.0,
        "float_per_class": {"a": 52.0, "b": 70.0}, "int8_per_class": {"a": 49.0, "b": 69.5},
        "layers": scores, "cumulative": curve, "seconds": 12.0, "output_stride": stride,
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def test_report_has_a_sensitivity_section_per_output_stride(tmp_path: Path) -> None:
    os8 = _sensitivity_file(tmp_path / "s8.json", 8, [("decoder.cat_q", 2.0), ("encoder.input_q", 0.8), ("decoder.aspp.in_q", -0.1)])
    os32 = _sensitivity_file(tmp_path / "s32.json", 32, [("decoder.aspp.in_q", 1.5), ("decoder.cat_q", 0.3)])
    written = build_report([CPU], tmp_path / "out", sensitivity=[os32, os8])
    md = written["report.md"].read_text()
    section = md[md.index("## INT8 sensitivity per output stride") :]
    assert section.index("### OS8: s8.json") < section.index("### OS32: s32.json")  # ordered by stride
    assert "most sensitive (mIoU recovered alone): decoder.cat_q +2.00; encoder.input_q +0.80; decoder.aspp.in_q -0.10" in section
    # By hand: full INT8 loses 3.0 on a and 0.5 on b; at k=2, a loses 0.5 and b 1.0.
    assert "8 images: FP32 60.00, full INT8 57.00 (-3.00) (a -3.00); 3 layers in 12 s" in section
    assert "against FP32): k=1 59.00, k=2 59.80 (b -1.00)" in section
    pngs = [name for name in written if name.startswith("sensitivity_")]
    assert len(pngs) == 2 and all(written[n].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)
    assert all(f"({n})" in md for n in pngs)  # each plot is linked
    # A bad file fails before anything is written.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(os8.read_text()), "output_stride": 12}))
    with pytest.raises(CheckpointError, match="output_stride"):
        build_report([CPU], tmp_path / "out2", sensitivity=[bad])
    assert not (tmp_path / "out2").exists()
