"""TensorRTRunner on the stand-ins for tensorrt and cuda-python (fake_tensorrt, fake_cudart).

The stand-in engine runs the bundle's ONNX with onnxruntime on the bytes the runner put in device
memory, so comparing with onnxruntime on the same file checks the bindings, shapes, copies and
stream order of the runner; the error paths check that each failure TensorRT or CUDA reports
becomes one TargetError saying the fix.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fake_cudart import PINNED_BYTES_PER_MS, FakeCudart, cudaError_t
from fake_tensorrt import FakeTensorRT, install
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import CheckpointError, MissingDependencyError, TargetError
from edgeseg.export import tensorrt as T
from edgeseg.export import tensorrt_engine as TE
from edgeseg.export.onnx_export import export_onnx
from edgeseg.models import build_model


def _reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _write_build_json(bundle: Path, precision: str = "fp32", dla: int | None = None, max_batch: int = 4) -> Path:
    inputs = T.onnx_inputs(bundle / "model.onnx", max_batch=max_batch)
    cfg = T.build_config(precision, inputs, dla_core=dla, workspace_gb=1.0, fp16_onnx=False)
    (bundle / "build.json").write_text(json.dumps(cfg))
    return bundle


@pytest.fixture(scope="module")
def deeplab_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny model (width 0.35, OS16, 4 classes) through the project's ONNX export, dynamic batch."""
    torch.manual_seed(0)
    model = build_model(num_classes=4, output_stride=16, width_mult=0.35).eval()
    bundle = tmp_path_factory.mktemp("deeplab")
    export_onnx(model, bundle / "model.onnx", input_size=(64, 64), meta={"name": "tiny"}, dynamic_batch=True)
    return _write_build_json(bundle)


def _conv_bundle(folder: Path, precision: str = "fp32", dla: int | None = None) -> Path:
    """A hand-made static ONNX (1x1 convolution, batch 1, 8x8): fast, for the error paths."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in (("w", (4, 3, 1, 1)), ("b", (4,)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["logits"])],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return _write_build_json(folder, precision, dla)


def _images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("version", ["10.7.0", "11.4.0"])
@pytest.mark.parametrize("outputs_first", [False, True])
def test_runner_matches_onnxruntime(
    deeplab_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, outputs_first: bool
) -> None:
    bundle = Path(shutil.copytree(deeplab_bundle, tmp_path / "bundle"))
    cudart = FakeCudart()
    trt = FakeTensorRT(version, outputs_first=outputs_first, cudart=cudart)
    install(monkeypatch, trt, cudart)
    runner = TE.TensorRTRunner(bundle)  # no model.engine yet: built through the stand-in builder first
    assert (bundle / "model.engine").read_bytes() == trt.plans[-1] and runner.static_batch is None
    for seed, batch in enumerate([2, 1, 3, 2]):  # dynamic batch: buffers grow for 3, are reused for 2
        x = _images(batch, 64, seed)
        got = runner.run(x)
        assert got.shape == (batch, 4, 64, 64) and got.dtype == np.float32
        np.testing.assert_allclose(got, _reference(bundle / "model.onnx", x), rtol=1e-5, atol=1e-5)
    # one input and one output buffer on the device and pinned on the host, one stream, four events
    assert cudart._in_use() == {"device": 2, "pinned": 2, "streams": 1, "events": 4}
    del runner
    gc.collect()
    assert cudart._in_use() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}  # freed and destroyed


@pytest.mark.parametrize("engine_ms", [0.25, 3.0])
def test_runner_times_the_engine_and_the_copies_on_the_device(
    deeplab_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_ms: float
) -> None:
    """Engine-only and copy times are the device clock between the runner's events: each copy's
    bytes at the pinned bandwidth (a pageable copy would be 4x slower), the engine `engine_ms`;
    the logits read back from pinned memory still equal onnxruntime's."""
    bundle = Path(shutil.copytree(deeplab_bundle, tmp_path / "bundle"))
    cudart = FakeCudart(engine_ms=engine_ms)
    install(monkeypatch, FakeTensorRT("10.7.0", cudart=cudart), cudart)
    runner = TE.TensorRTRunner(bundle)
    assert runner.last_times == {}
    for seed, batch in enumerate([1, 3]):
        x = _images(batch, 64, seed)
        got = runner.run(x)
        np.testing.assert_allclose(got, _reference(bundle / "model.onnx", x), rtol=1e-5, atol=1e-5)
        assert set(runner.last_times) == {"h2d", "engine", "d2h"}
        assert runner.last_times["h2d"] == pytest.approx(x.nbytes / PINNED_BYTES_PER_MS, rel=1e-9)
        assert runner.last_times["engine"] == pytest.approx(engine_ms, rel=1e-9)
        assert runner.last_times["d2h"] == pytest.approx(batch * 4 * 64 * 64 * 4 / PINNED_BYTES_PER_MS, rel=1e-9)
    assert cudart._copies == [("h2d", True), ("d2h", True)] * 2  # every copy from and to pinned memory


def test_runner_output_is_a_view_of_pinned_memory(deeplab_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The returned logits live in the pinned output buffer: the next run overwrites them (bench
    and the callers copy what they keep)."""
    cudart = FakeCudart()
    install(monkeypatch, FakeTensorRT("10.7.0", cudart=cudart), cudart)
    runner = TE.TensorRTRunner(Path(shutil.copytree(deeplab_bundle, tmp_path / "bundle")))
    first = runner.run(_images(1, 64, 0))
    kept = first.copy()
    second = runner.run(_images(1, 64, 1))
    assert np.shares_memory(first, second) and np.array_equal(first, second) and not np.array_equal(kept, second)


def test_runner_shapes_outside_the_profile(deeplab_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cudart = FakeCudart()
    install(monkeypatch, FakeTensorRT("10.7.0", cudart=cudart), cudart)
    static = TE.TensorRTRunner(_conv_bundle(tmp_path / "conv"))
    assert static.static_batch == 1
    with pytest.raises(TargetError, match="takes 'input' from 1x3x8x8 to 1x3x8x8, not 2x3x8x8; pass a batch in that range"):
        static.run(_images(2, 8))
    dynamic = TE.TensorRTRunner(Path(shutil.copytree(deeplab_bundle, tmp_path / "deeplab")))
    with pytest.raises(TargetError, match="takes 'input' from 1x3x64x64 to 4x3x64x64, not 5x3x64x64"):
        dynamic.run(_images(5, 64))


def test_runner_sets_the_dla_core_before_deserializing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cudart = FakeCudart()
    for folder, dla, argument, expected in [("dla1", 1, None, 1), ("override", 1, 0, 0), ("gpu", None, None, -1)]:
        trt = FakeTensorRT("10.7.0", dla_cores=2, cudart=cudart)
        install(monkeypatch, trt, cudart)
        bundle = _conv_bundle(tmp_path / folder, "fp16", dla)
        runner = TE.TensorRTRunner(bundle, dla_core=argument)
        assert [c for c in trt.calls if c[0] == "deserialize"] == [("deserialize", expected)]  # -1: never set
        assert runner.runtime.DLA_core == expected
        x = _images(1, 8)
        np.testing.assert_allclose(runner.run(x), _reference(bundle / "model.onnx", x), rtol=1e-5, atol=1e-6)
    install(monkeypatch, FakeTensorRT("10.7.0", dla_cores=0, cudart=cudart), cudart)
    with pytest.raises(TargetError, match="runs on DLA core 1, which this device lacks \\(0 DLA cores\\); run it on a Jetson with DLA"):
        TE.TensorRTRunner(tmp_path / "dla1")


def test_runner_engine_that_does_not_deserialize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cudart = FakeCudart()
    bundle = _conv_bundle(tmp_path)
    install(monkeypatch, FakeTensorRT("10.7.0", cudart=cudart), cudart)
    TE.build_engine(bundle)
    trt11 = FakeTensorRT("11.4.0", cudart=cudart)
    install(monkeypatch, trt11, cudart)
    with pytest.raises(TargetError, match=r"model.engine' was built by another TensorRT or GPU \(\[ERROR\] .*Version tag.*; delete it"):
        TE.TensorRTRunner(bundle)
    (bundle / "model.engine").write_bytes(b"\x00garbage")
    with pytest.raises(TargetError, match=r"built by another TensorRT or GPU \(.*Magic tag does not match"):
        TE.TensorRTRunner(bundle)
    (bundle / "model.engine").unlink()
    TE.TensorRTRunner(bundle)  # deleted: rebuilt by this TensorRT
    assert (bundle / "model.engine").read_bytes() == trt11.plans[-1]


def test_runner_cuda_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _conv_bundle(tmp_path)
    for cudart, message in [
        (FakeCudart(devices=0), "no NVIDIA GPU found; TensorRT engines run on a Jetson"),
        (
            FakeCudart(fail={"cudaGetDeviceCount": cudaError_t.cudaErrorInsufficientDriver}),
            r"CUDA call failed \(cudaErrorInsufficientDriver\)",
        ),
    ]:
        install(monkeypatch, FakeTensorRT("10.7.0", cudart=cudart), cudart)
        with pytest.raises(TargetError, match=message):
            TE.TensorRTRunner(bundle)
    for call in ("cudaMalloc", "cudaMallocHost"):
        cudart = FakeCudart(fail={call: cudaError_t.cudaErrorMemoryAllocation})
        install(monkeypatch, FakeTensorRT("10.7.0", cudart=cudart), cudart)
        with pytest.raises(TargetError, match=r"CUDA call failed \(cudaErrorMemoryAllocation\); this needs an NVIDIA GPU"):
            TE.TensorRTRunner(bundle).run(_images(1, 8))
    cudart = FakeCudart(fail={"cudaEventCreate": cudaError_t.cudaErrorMemoryAllocation})
    install(monkeypatch, FakeTensorRT("10.7.0", cudart=cudart), cudart)
    with pytest.raises(TargetError, match=r"CUDA call failed \(cudaErrorMemoryAllocation\)"):
        TE.TensorRTRunner(bundle)
    gc.collect()
    assert cudart._in_use() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}  # a runner that failed half-built frees what it made


def test_runner_inference_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cudart = FakeCudart()
    install(monkeypatch, FakeTensorRT("10.7.0", execute_ok=False, cudart=cudart), cudart)
    runner = TE.TensorRTRunner(_conv_bundle(tmp_path))
    with pytest.raises(TargetError, match=r"TensorRT inference failed \(\[ERROR\] IExecutionContext::enqueueV3: .*Cask"):
        runner.run(_images(1, 8))


def test_runner_needs_its_sdks_and_a_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _conv_bundle(tmp_path / "b")
    install(monkeypatch, None, FakeCudart())
    with pytest.raises(MissingDependencyError, match=r'tensorrt is not installed; .*pip install "edgeseg\[tensorrt\]"'):
        TE.TensorRTRunner(bundle)
    install(monkeypatch, FakeTensorRT("10.7.0"))
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r'cuda-python is not installed; .*pip install "edgeseg\[tensorrt\]"'):
        TE.TensorRTRunner(bundle)
    install(monkeypatch, FakeTensorRT("10.7.0"), FakeCudart())
    with pytest.raises(CheckpointError, match="has no build.json, so it is not a Jetson bundle"):
        TE.TensorRTRunner(tmp_path)
