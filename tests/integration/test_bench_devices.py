"""bench's per-target options with the real runtimes: OpenVINO's --device and --hint on this CPU,
Core ML's --compute-units with the real coremltools (prediction needs macOS), and the refusal of
an option by targets that do not take it.

The artifacts are built here by hand and small (an OpenVINO IR and an ONNX file of two
convolutions, a one-op .mlpackage), so the tests depend on no exporter and on no torch; OpenVINO's
logits are compared with the same convolutions in numpy, and every property read back from
OpenVINO is compared with what OpenVINO itself reports for the same IR compiled here.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeseg.bench import BenchOptions, bench_artifact, bench_interleaved, bench_into, load_results
from edgeseg.bench.artifact import open_artifact
from edgeseg.bench.runners import load_runner
from edgeseg.cli import main
from edgeseg.data.classes import SYNTHETIC
from edgeseg.errors import ConfigError, TargetError

pytestmark = pytest.mark.integration
SIZE = 32
CLASSES = len(SYNTHETIC.names)
NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
FAST = {"runs": 4, "warmup": 1, "accuracy": False}
RNG = np.random.default_rng(0)
W1, B1 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, RNG.standard_normal(8).astype(np.float32) * 0.1
W2, B2 = RNG.standard_normal((CLASSES, 8, 1, 1)).astype(np.float32) * 0.3, RNG.standard_normal(CLASSES).astype(np.float32) * 0.1


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stride-1 convolution with 'same' zero padding, in float64 (the reference)."""
    k, pad = w.shape[2], w.shape[2] // 2
    h, wd = x.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = sum(
        np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j].astype(np.float64)) for i in range(k) for j in range(k)
    )
    return out + b[None, :, None, None]


def _reference(x: np.ndarray) -> np.ndarray:
    return _conv(np.maximum(_conv(x, W1, B1), 0), W2, B2)


def _meta(target: str, model_file: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "target": target,
        "precision": "fp32",
        "model_file": model_file,
        "input_name": "input",
        "output_name": "logits",
        "input_size": [SIZE, SIZE],
        "output_stride": 16,
        "classes": SYNTHETIC.to_dict(),
        "normalization": NORM,
        "data": {
            "format": "synthetic",
            "root": None,
            "split": "val",
            "synthetic": {"num_train": 2, "num_val": 2, "size": [40, 40], "seed": 0},
        },
        "quant": None,
        "source_checkpoint": None,
        "source_checkpoint_sha256": None,
        "recipe_hash": None,
        "tool_versions": {},
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An OpenVINO IR and an ONNX artifact of the same two convolutions (conv 3x3, ReLU, conv 1x1)."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper
    from openvino import opset13 as ops

    out = tmp_path_factory.mktemp("bench_devices")
    param = ops.parameter([1, 3, SIZE, SIZE], np.float32, name="input")
    hidden = ops.relu(
        ops.add(ops.convolution(param, ops.constant(W1), [1, 1], [1, 1], [1, 1], [1, 1]), ops.constant(B1.reshape(1, -1, 1, 1)))
    )
    logits = ops.add(ops.convolution(hidden, ops.constant(W2), [1, 1], [0, 0], [0, 0], [1, 1]), ops.constant(B2.reshape(1, -1, 1, 1)))
    logits.output(0).get_tensor().set_names({"logits"})
    (out / "openvino").mkdir()
    ov.save_model(ov.Model([logits], [param], "two_convs"), str(out / "openvino/model.xml"), compress_to_fp16=False)
    weights = [numpy_helper.from_array(a, n) for n, a in (("w1", W1), ("b1", B1), ("w2", W2), ("b2", B2))]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Conv", ["r", "w2", "b2"], ["logits"]),
        ],
        "two_convs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES, SIZE, SIZE])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (out / "onnx").mkdir()
    onnx.save(model, out / "onnx/model.onnx")
    for target, name in (("openvino", "model.xml"), ("onnx", "model.onnx")):
        (out / target / "meta.json").write_text(json.dumps(_meta(target, name)))
    return {"openvino": out / "openvino", "onnx": out / "onnx"}


def _available() -> list[str]:
    import openvino as ov

    return [str(d) for d in ov.Core().available_devices]


def _compiled_here(xml: Path, hint: str) -> Any:
    """The same IR compiled by OpenVINO directly, as bench should: the independent reading."""
    import openvino as ov

    return ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"})


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The console entry point in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["edgeseg", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("spelling", ["CPU", "cpu"])
def test_device_cpu_runs_the_ir_and_is_recorded(artifacts: dict[str, Path], spelling: str) -> None:
    x = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    options = BenchOptions(**FAST, device=spelling)
    options.check()
    loaded = load_runner(open_artifact(artifacts["openvino"]), options=options.target_options())
    assert loaded.provider == "CPU" and loaded.runner.execution_devices == ["CPU"]  # type: ignore[attr-defined]
    np.testing.assert_allclose(loaded.runner.run(x), _reference(x), rtol=1e-4, atol=1e-4)
    row = bench_artifact(artifacts["openvino"], BenchOptions(**FAST, device=spelling))
    assert (row.provider, row.perf_hint, row.infer_requests, row.precision_hint) == ("CPU", "latency", None, "f32")


def test_absent_device_is_one_line_naming_the_available_ones(
    artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    available = _available()
    if "NPU" in {d.split(".")[0] for d in available}:
        pytest.skip("this machine has an NPU: OpenVINO lists it")
    expected = f"OpenVINO device 'NPU' is not available here (available: {', '.join(available)}); pass --device "
    with pytest.raises(TargetError, match="^" + re.escape(expected)):
        bench_into(tmp_path / "r.json", [artifacts["openvino"]], BenchOptions(**FAST, device="NPU"))
    assert not (tmp_path / "r.json").exists()  # refused before anything was measured
    code, err = _main(monkeypatch, capsys, "bench", str(artifacts["openvino"]), "--device", "NPU", "--json", str(tmp_path / "r.json"))
    assert code == 2 and err.startswith(f"error: {expected}") and len(err.splitlines()) == 1, err


def test_hint_throughput_records_the_queue_openvino_chose(artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The row's infer_requests is OPTIMAL_NUMBER_OF_INFER_REQUESTS of the IR compiled with the
    throughput hint, and its throughput is `runs` inferences over the full-load seconds, all
    requests computing the right logits."""
    from edgeseg.export.openvino import OpenVINORunner

    want = int(_compiled_here(artifacts["openvino"] / "model.xml", "THROUGHPUT").get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    calls: list[tuple[int, float]] = []
    runners: list[Any] = []
    real = OpenVINORunner.run_full_load

    def spy(self: Any, x: np.ndarray, count: int) -> float:
        seconds = real(self, x, count)
        calls.append((count, seconds))
        runners.append(self)
        return seconds

    monkeypatch.setattr(OpenVINORunner, "run_full_load", spy)
    row = bench_artifact(artifacts["openvino"], BenchOptions(**FAST, perf_hint="throughput"))
    assert (row.perf_hint, row.infer_requests, row.provider) == ("throughput", want, "CPU")
    assert [c for c, _ in calls] == [want, FAST["runs"]]  # one untimed inference per request, then the timed ones
    assert row.throughput == pytest.approx(FAST["runs"] / calls[1][1], rel=1e-3)
    assert "full load" in row.notes and len(row.latency_samples_ms) == FAST["runs"]
    queue = runners[-1]._queue
    assert len(queue) == want
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)  # bench's fixed input
    for request in queue:
        np.testing.assert_allclose(request.get_output_tensor(0).data, _reference(x), rtol=1e-4, atol=1e-4)


def test_cli_passes_device_and_hint(
    artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", str(artifacts["openvino"]), "--no-accuracy", "--runs", "2", "--warmup", "0", "--json", str(tmp_path / "r.json")]
    code, err = _main(monkeypatch, capsys, *args, "--device", "cpu", "--hint", "THROUGHPUT")
    assert code == 0, err
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert (row["provider"], row["perf_hint"], row["infer_requests"] >= 1) == ("CPU", "throughput", True)
    code, err = _main(monkeypatch, capsys, *args, "--compute-units", "cpu_only")
    assert code == 2 and err == "error: --compute-units cpu_only applies to Core ML artifacts only, not to openvino; leave it out"


def test_latency_and_throughput_rows_of_one_artifact_side_by_side(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """What benchmarks/openvino_throughput.py does: one IR under both hints, interleaved."""
    latency = BenchOptions(**FAST, perf_hint="latency")
    throughput = BenchOptions(**FAST, perf_hint="throughput")
    want = int(_compiled_here(artifacts["openvino"] / "model.xml", "THROUGHPUT").get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    rows = bench_interleaved(tmp_path / "r.json", [artifacts["openvino"]] * 2, [latency, throughput], rounds=2)
    saved = load_results(tmp_path / "r.json")
    assert [(r.perf_hint, r.infer_requests) for r in saved] == [("latency", None), ("throughput", want)]
    assert [r.row_id for r in saved] == [r.row_id for r in rows] and len({r.row_id for r in rows}) == 2
    assert all(len(r.round_p50_ms or []) == 2 and len(r.latency_samples_ms) == FAST["runs"] for r in saved)


def test_options_refused_by_targets_that_do_not_take_them(
    artifacts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    onnx, ov = artifacts["onnx"], artifacts["openvino"]
    for options, message in [
        (BenchOptions(**FAST, device="GPU"), "--device GPU applies to OpenVINO artifacts only, not to onnx; leave it out"),
        (BenchOptions(**FAST, perf_hint="throughput"), "--hint throughput applies to OpenVINO artifacts only, not to onnx; leave it out"),
        (BenchOptions(**FAST, compute_units="cpu_and_ne"), "--compute-units cpu_and_ne applies to Core ML artifacts only, not to onnx"),
    ]:
        with pytest.raises(ConfigError, match=f"^{message}"):
            bench_into(tmp_path / "r.json", [onnx], options)
    with pytest.raises(
        ConfigError, match="--compute-units cpu_only applies to Core ML artifacts only, not to onnx, openvino; leave it out"
    ):
        bench_interleaved(tmp_path / "r.json", [ov, onnx], BenchOptions(**FAST, compute_units="cpu_only"), rounds=2)
    with pytest.raises(ConfigError, match="^--device 'TPU' is unknown \\(did you mean 'NPU'\\?\\); use one of CPU, GPU, NPU, AUTO$"):
        bench_into(tmp_path / "r.json", [ov], BenchOptions(**FAST, device="TPU"))
    with pytest.raises(
        ConfigError, match="^--hint 'throughtput' is unknown \\(did you mean 'throughput'\\?\\); use one of latency, throughput$"
    ):
        bench_into(tmp_path / "r.json", [ov], BenchOptions(**FAST, perf_hint="throughtput"))
    assert not (tmp_path / "r.json").exists()
    # A mix: the option goes to the artifact that takes it and is ignored, with a warning, for the other.
    with caplog.at_level(logging.WARNING, logger="edgeseg.bench.runners"):
        rows = bench_into(tmp_path / "r.json", [ov, onnx], BenchOptions(**FAST, perf_hint="throughput"))
    assert [(r.target, r.perf_hint, r.infer_requests is not None) for r in rows] == [
        ("openvino", "throughput", True),
        ("onnx", None, False),
    ]
    assert any("--hint throughput does not apply to a onnx artifact" in m for m in caplog.messages)


def _mlpackage(folder: Path) -> Path:
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.iOS17)
    def prog(x: Any) -> Any:
        return mb.relu(x=x, name="logits")

    path = folder / "model.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17).save(str(path))
    return path


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    return _mlpackage(tmp_path_factory.mktemp("coreml"))


@pytest.mark.parametrize(
    ("units", "member"), [("all", "ALL"), ("cpu_and_ne", "CPU_AND_NE"), ("cpu_and_gpu", "CPU_AND_GPU"), ("cpu_only", "CPU_ONLY")]
)
def test_coreml_runner_is_built_with_the_compute_units(mlpackage: Path, monkeypatch: pytest.MonkeyPatch, units: str, member: str) -> None:
    """MLModel is constructed with ct.ComputeUnit.<member> (checked on the real coremltools
    enum, without predicting), and the row's provider names the units."""
    import coremltools as ct

    from edgeseg.export import coreml

    monkeypatch.setattr(coreml, "is_macos", lambda: True)  # constructing an MLModel works anywhere; predicting does not
    meta = {"model_file": mlpackage.name, "normalization": NORM}
    loaded = coreml.TARGET.load(mlpackage.parent, meta, compute_units=units)
    assert loaded.runner.model.compute_unit == getattr(ct.ComputeUnit, member)  # type: ignore[attr-defined]
    assert loaded.provider == f"Core ML ({units} compute units)"
    options = BenchOptions(compute_units=units.upper())  # the flag's value in any case
    options.check()
    assert options.compute_units == units


def test_coreml_compute_units_validated_and_pixels_prepared_outside_the_model(mlpackage: Path) -> None:
    from edgeseg.export import coreml

    with pytest.raises(ConfigError, match="^--compute-units 'gpu' is unknown.*; use one of all, cpu_and_ne, cpu_and_gpu, cpu_only$"):
        BenchOptions(compute_units="gpu").check()
    with pytest.raises(ConfigError, match="^--compute-units 'npu' is not a Core ML compute unit; use one of all, cpu_and_ne"):
        coreml.TARGET.load(mlpackage.parent, {"model_file": mlpackage.name, "normalization": NORM}, compute_units="npu")
    runner = coreml.CoreMLRunner(mlpackage, {"normalization": NORM}, "cpu_only")
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    mean, std = np.array(NORM["mean"], np.float32), np.array(NORM["std"], np.float32)
    x = ((pixels / np.float32(255) - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)  # as edgeseg's preprocess
    images = runner.prepare(x)
    assert [im.mode for im in images] == ["RGB", "RGB"] and all(np.array_equal(np.asarray(im), p) for im, p in zip(images, pixels))


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML prediction needs macOS (Core ML framework); checked on a Mac")
@pytest.mark.parametrize("units", ["all", "cpu_only"])
def test_coreml_prediction_with_compute_units(mlpackage: Path, units: str) -> None:
    from edgeseg.export import coreml

    runner = coreml.CoreMLRunner(mlpackage, {"normalization": NORM}, units)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(runner.model.predict({"x": x})["logits"], np.maximum(x, 0), atol=1e-2)
