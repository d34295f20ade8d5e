"""Targets without heavy runtimes: artifact folders and meta.json, the Jetson build plan (trtexec
lines and TensorRT API calls per major version), Core ML's quantize/dequantize view, option checks."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeseg.errors import CheckpointError, ConfigError, TargetError
from edgeseg.export import artifacts as A
from edgeseg.export import common as C
from edgeseg.export import meta as M
from edgeseg.export import tensorrt as T
from edgeseg.export import tensorrt_engine as TE
from edgeseg.export.base import ExportRequest
from edgeseg.export.meta import META_SCHEMA_VERSION
from edgeseg.models import build_model

SHAPE = [1, 3, 64, 64]
STATIC = {"input": {"min": SHAPE, "opt": SHAPE, "max": SHAPE}}


def _meta(**over: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "schema_version": META_SCHEMA_VERSION,
        "target": "openvino",
        "precision": "int8",
        "model_file": "model.xml",
        "input_name": "input",
        "output_name": "logits",
        "input_size": [64, 64],
        "output_stride": 16,
        "classes": {"names": ["a", "b", "c"], "colors": [[0, 0, 0], [1, 1, 1], [2, 2, 2]], "ignore_index": 255},
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "data": {"format": "synthetic", "root": None, "split": "val"},
        "quant": None,
        "source_checkpoint": "x.pt",
        "source_checkpoint_sha256": "0" * 64,
        "recipe_hash": "abc",
        "tool_versions": {"edgeseg": "0.1.0"},
    }
    meta.update(over)
    return meta


def _write(folder: Path, **over: Any) -> dict[str, Any]:
    def build(tmp: Path) -> dict[str, Any]:
        (tmp / "model.xml").write_text("<xml/>")
        (tmp / "model.bin").write_bytes(b"\0" * 100)
        return _meta(**over)

    return A.write_artifact(folder, build)


# --- artifact folders -----------------------------------------------------------------------------


def test_write_artifact_adds_meta_and_readme(tmp_path: Path) -> None:
    folder = tmp_path / A.artifact_name("openvino", "int8", 16)
    meta = _write(folder)
    assert folder.name == "openvino_int8_os16"
    assert json.loads((folder / "meta.json").read_text()) == meta
    readme = (folder / "README.md").read_text().strip()
    assert readme.count("\n") == 0 and f"edgeseg bench {folder} --json results.json" in readme
    assert M.read_meta(folder, target="openvino", input_size=(64, 64)) == meta
    assert M.model_size(folder, "model.xml") == len("<xml/>") + 100  # model.xml + model.bin, not meta/README


def test_failed_build_leaves_old_artifact(tmp_path: Path) -> None:
    folder = tmp_path / "openvino_int8_os16"
    _write(folder)
    before = sorted(p.name for p in folder.iterdir())

    def broken(tmp: Path) -> dict[str, Any]:
        (tmp / "model.xml").write_text("half")
        raise TargetError("conversion failed")

    with pytest.raises(TargetError):
        A.write_artifact(folder, broken)
    assert sorted(p.name for p in folder.iterdir()) == before and (folder / "model.xml").read_text() == "<xml/>"
    assert [p.name for p in tmp_path.iterdir()] == ["openvino_int8_os16"]  # no temporary folder left


def test_meta_missing_a_key_is_refused(tmp_path: Path) -> None:
    def build(tmp: Path) -> dict[str, Any]:
        (tmp / "model.xml").write_text("x")
        meta = _meta()
        del meta["classes"]
        return meta

    with pytest.raises(CheckpointError, match="lacks 'classes'"):
        A.write_artifact(tmp_path / "a", build)
    assert not (tmp_path / "a").exists()


def test_model_file_must_be_written(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="did not write 'model.xml'"):
        A.write_artifact(tmp_path / "a", lambda tmp: _meta())


def test_read_meta_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        M.read_meta(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no meta.json"):
        M.read_meta(tmp_path / "empty")
    folder = tmp_path / "art"
    _write(folder)
    with pytest.raises(TargetError, match="exported for input 64x64, not 96x128; .*--input-size 96x128"):
        M.read_meta(folder, input_size=(96, 128))
    with pytest.raises(TargetError, match="openvino artifact, not coreml"):
        M.read_meta(folder, target="coreml")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "schema_version": META_SCHEMA_VERSION + 1}))
    with pytest.raises(CheckpointError, match="schema_version"):
        M.read_meta(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        M.read_meta(folder)
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "model.xml").unlink()
    with pytest.raises(CheckpointError, match="lacks its model file"):
        M.read_meta(folder)


def test_every_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        M.read_meta(tmp_path)
    assert "\n" not in str(info.value)


def test_artifact_size_counts_folder_models(tmp_path: Path) -> None:
    pkg = tmp_path / "model.mlpackage" / "Data"
    pkg.mkdir(parents=True)
    (pkg / "weights.bin").write_bytes(b"\1" * 50)
    (tmp_path / "model.mlpackage" / "Manifest.json").write_text("{}")
    assert M.model_size(tmp_path, "model.mlpackage") == 52


def test_argmax_agreement() -> None:
    a = np.zeros((1, 3, 2, 2), np.float32)
    b = a.copy()
    a[0, 1] = 1.0  # class 1 everywhere
    b[0, 1] = 1.0
    b[0, 2, 0, 0] = 2.0  # one pixel of four differs
    assert C.argmax_agreement(a, b) == 0.75
    with pytest.raises(TargetError, match="output shapes differ"):
        C.argmax_agreement(a, b[:, :2])


def test_export_all_skips_missing_sdks_and_reports_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)  # as on a machine without coremltools
    request = ExportRequest(checkpoint=tmp_path / "missing.pt", out_dir=tmp_path / "out", options={"ptq": "nncf"})
    results = {r.target: r for r in A.export_targets(request, ["all"])}
    assert set(results) == {"onnx", "openvino", "jetson", "coreml"}
    assert "coremltools is not installed" in results["coreml"].skipped and "edgeseg[coreml]" in results["coreml"].skipped
    for name in ("onnx", "openvino", "jetson"):
        assert "missing.pt' does not exist" in results[name].error
    with pytest.raises(CheckpointError, match="does not exist"):
        A.export_targets(request, ["jetson"])  # named explicitly: raises
    fp16 = {r.target: r for r in A.export_targets(ExportRequest(tmp_path / "missing.pt", precision="fp16", out_dir=tmp_path), ["all"])}
    assert fp16["onnx"].skipped == "onnx has no fp16 export (it has fp32, int8)" and fp16["openvino"].error


# --- Jetson build plan ----------------------------------------------------------------------------


def _cfg(precision: str, dla: int | None = None, inputs: dict | None = None) -> dict[str, Any]:
    return T.build_config(precision, inputs or STATIC, dla_core=dla, workspace_gb=2.0, fp16_onnx=True)


def test_int8_is_strongly_typed_on_10_and_11() -> None:
    cmd = _cfg("int8")["trtexec"]
    assert cmd["10"].startswith("trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped")
    assert "--int8" not in cmd["10"] and "--fp16" not in cmd["10"]
    for removed in ("--int8", "--fp16", "--stronglyTyped", "--best", "--calib"):
        assert removed not in cmd["11"]  # TensorRT 11 removed the precision flags; strong typing is always on
    assert "--memPoolSize=workspace:2048M" in cmd["10"] and "--timingCacheFile=timing.cache" in cmd["11"]


def test_fp16_uses_flag_on_10_and_fp16_onnx_on_11() -> None:
    cfg = _cfg("fp16")
    assert cfg["onnx"] == {"10": "model.onnx", "11": "model_fp16.onnx"}
    assert "--fp16" in cfg["trtexec"]["10"] and "--stronglyTyped" not in cfg["trtexec"]["10"]
    assert cfg["trtexec"]["11"].startswith("trtexec --onnx=model_fp16.onnx") and "--fp16" not in cfg["trtexec"]["11"]
    assert cfg["strongly_typed"] == {"10": False, "11": True}
    no_converter = T.build_config("fp16", STATIC, dla_core=None, workspace_gb=1.0, fp16_onnx=False)
    assert no_converter["onnx"]["11"] == "model.onnx" and no_converter["trtexec"]["11"].startswith("unavailable")


def test_dla_adds_core_and_gpu_fallback() -> None:
    cfg = _cfg("int8", dla=1)
    assert cfg["dla_core"] == 1 and cfg["gpu_fallback"] is True
    # TensorRT 10 DLA builds are weakly typed (precision flags); the Q/DQ scales still come from the graph.
    assert "--int8 --fp16 --useDLACore=1 --allowGPUFallback" in cfg["trtexec"]["10"] and "--stronglyTyped" not in cfg["trtexec"]["10"]
    assert "--useDLACore=1 --allowGPUFallback" in cfg["trtexec"]["11"] and "--int8" not in cfg["trtexec"]["11"]
    with pytest.raises(ConfigError, match="--dla runs FP16 or INT8 only"):
        _cfg("fp32", dla=0)


def test_dynamic_batch_writes_a_profile() -> None:
    dyn = {"input": {"min": SHAPE, "opt": SHAPE, "max": [8, 3, 64, 64]}}
    cmd = _cfg("int8", inputs=dyn)["trtexec"]["10"]
    assert "--minShapes=input:1x3x64x64 --optShapes=input:1x3x64x64 --maxShapes=input:8x3x64x64" in cmd
    assert "Shapes" not in _cfg("int8")["trtexec"]["10"]


def test_bad_build_options() -> None:
    with pytest.raises(ConfigError, match="positive size"):
        T.build_config("int8", STATIC, dla_core=None, workspace_gb=0, fp16_onnx=False)
    with pytest.raises(ConfigError, match="use fp32, fp16 or int8"):
        T.build_config("int4", STATIC, dla_core=None, workspace_gb=1, fp16_onnx=False)


class FakeTensorRT(types.ModuleType):
    """A stand-in for the `tensorrt` module (which cannot exist without an NVIDIA GPU), recording the
    calls build_engine makes. Only the names of TensorRT's documented Python API exist on it, and
    the 11.x variant lacks what 11.x removed (BuilderFlag.FP16/INT8), so using them fails."""

    def __init__(self, version: str, dla_cores: int = 2, parse_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        major = int(version.split(".")[0])
        fake = self

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (
                types.SimpleNamespace(name=n) for n in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
            )

        class ILogger:
            def __init__(self) -> None: ...

        ILogger.Severity = Severity  # type: ignore[attr-defined]
        flags = ["GPU_FALLBACK"] + ([] if major >= 11 else ["FP16", "INT8"])
        self.ILogger = ILogger
        self.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
        # The real TensorRT 10/11 values: EXPLICIT_BATCH (deprecated, 10.x only) is 0, STRONGLY_TYPED is 1.
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                fake.calls.append(("flag", flag))

            def __setattr__(self, name: str, value: Any) -> None:
                fake.calls.append(("set", name, value))

            def add_optimization_profile(self, profile: Any) -> None:
                fake.calls.append(("profile", profile.shapes))

            def create_timing_cache(self, blob: bytes) -> str:
                fake.calls.append(("cache_in", blob))
                return "cache"

            def set_timing_cache(self, cache: str, ignore_mismatch: bool) -> None:
                fake.calls.append(("set_cache", cache, ignore_mismatch))

            def get_timing_cache(self) -> Any:
                return types.SimpleNamespace(serialize=lambda: b"CACHE")

        class Profile:
            def __init__(self) -> None:
                self.shapes: list = []

            def set_shape(self, name: str, lo: list, opt: list, hi: list) -> None:
                self.shapes.append((name, lo, opt, hi))

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger: Any) -> None:
                logger.log(Severity.INFO, "builder created")

            def create_network(self, flags: int) -> str:
                fake.calls.append(("network", flags))
                return "network"

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes:
                return b"ENGINE"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network: str, logger: Any) -> None: ...

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse", Path(path).name))
                return parse_ok

            def get_error(self, i: int) -> str:
                return "Unsupported ONNX op: Foo"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def _bundle(tmp_path: Path, precision: str, dla: int | None = None, inputs: dict | None = None) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model_fp16.onnx").write_bytes(b"onnx16")
    (tmp_path / "build.json").write_text(json.dumps(_cfg(precision, dla, inputs)))
    return tmp_path


def _build(monkeypatch: pytest.MonkeyPatch, trt: FakeTensorRT, bundle: Path, **kw: Any) -> list[tuple]:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine, log = TE.build_engine(bundle, **kw)
    assert engine.read_bytes() == b"ENGINE" and "builder created" in log.read_text()
    assert (bundle / "timing.cache").read_bytes() == b"CACHE"
    return trt.calls


def test_build_int8_trt10_strongly_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _build(monkeypatch, FakeTensorRT("10.7.0"), _bundle(tmp_path, "int8"))
    assert ("network", 1 << 1) in calls and not [c for c in calls if c[0] == "flag"]  # strongly typed, not explicit batch
    assert ("pool", "WORKSPACE", 2 << 30) in calls and ("parse", "model.onnx") in calls
    assert ("cache_in", b"") in calls and ("set_cache", "cache", False) in calls


def test_build_fp16_trt10_sets_fp16_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _build(monkeypatch, FakeTensorRT("10.3.0"), _bundle(tmp_path, "fp16"))
    assert ("network", 0) in calls and [c for c in calls if c[0] == "flag"] == [("flag", "FP16")]


def test_build_trt11_never_uses_removed_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _build(monkeypatch, FakeTensorRT("11.4.1"), _bundle(tmp_path, "fp16", dla=0))
    assert ("network", 0) in calls and ("parse", "model_fp16.onnx") in calls
    assert [c for c in calls if c[0] == "flag"] == [("flag", "GPU_FALLBACK")]
    assert ("set", "default_device_type", "DLA") in calls and ("set", "DLA_core", 0) in calls


def test_build_int8_dla_trt10_is_weakly_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _build(monkeypatch, FakeTensorRT("10.7.0"), _bundle(tmp_path, "int8", dla=1), workspace_gb=1.0)
    flags = [c[1] for c in calls if c[0] == "flag"]
    assert ("network", 0) in calls and flags == ["FP16", "INT8", "GPU_FALLBACK"] and ("pool", "WORKSPACE", 1 << 30) in calls


def test_build_profile_and_timing_cache_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dyn = {"input": {"min": SHAPE, "opt": SHAPE, "max": [8, 3, 64, 64]}}
    bundle = _bundle(tmp_path, "int8", inputs=dyn)
    (bundle / "timing.cache").write_bytes(b"OLD")
    calls = _build(monkeypatch, FakeTensorRT("10.7.0"), bundle)
    assert ("profile", [("input", SHAPE, SHAPE, [8, 3, 64, 64])]) in calls and ("cache_in", b"OLD") in calls


def test_build_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path, "int8", dla=1)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("10.7.0", dla_cores=1))
    with pytest.raises(TargetError, match="DLA core 1 does not exist"):
        TE.build_engine(bundle)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("10.7.0", parse_ok=False))
    with pytest.raises(TargetError, match="cannot parse .*Unsupported ONNX op: Foo"):
        TE.build_engine(bundle, dla_core=0)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("8.6.1"))
    with pytest.raises(TargetError, match="install TensorRT 10.x or 11.x"):
        TE.build_engine(bundle)


def test_build_without_tensorrt_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(Exception, match=r'pip install "edgeseg\[tensorrt\]"'):
        TE.build_engine(_bundle(tmp_path, "int8"))


# --- Core ML and OpenVINO option checks -----------------------------------------------------------


def _quantized_tiny(seed: int = 0) -> torch.nn.Module:
    from edgeseg.quant import quantize

    torch.manual_seed(seed)
    model = build_model(num_classes=4, output_stride=16, width_mult=0.35).eval()
    model.set_input_size((64, 64))
    g = torch.Generator().manual_seed(seed)
    return quantize(model, {"method": "max"}, lambda m: [m(torch.randn(1, 3, 64, 64, generator=g)) for _ in range(3)]).eval()


def test_coreml_qdq_view_equals_fake_quant() -> None:
    from edgeseg.export.coreml import qdq_view

    q = _quantized_tiny()
    view = qdq_view(q).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = q(x), view(x)
    assert torch.equal(a, b)  # same rounding and clamping: only the traced ops differ
    ops = {n.kind() for n in torch.jit.trace(view, x[:1], check_trace=False).inlined_graph.nodes()}
    assert {"aten::quantize_per_tensor", "aten::quantize_per_channel", "aten::dequantize"} <= ops
    assert not any("fake_quantize" in op for op in ops)


def test_coreml_pixel_wrapper_matches_numpy_preprocess() -> None:
    from edgeseg.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
    from edgeseg.export.coreml import pixel_model

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    wrapper = pixel_model(torch.nn.Identity(), list(IMAGENET_MEAN), list(IMAGENET_STD))
    pixels = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)  # what ImageType(scale=1/255) feeds
    got = wrapper(pixels).numpy()
    np.testing.assert_allclose(got, preprocess(image), atol=1e-5)


def test_openvino_request_checks(tmp_path: Path) -> None:
    from edgeseg.export.openvino import check_request

    ckpt = tmp_path / "fp32.pt"
    with pytest.raises(ConfigError, match="use it with --precision int8"):
        check_request(ExportRequest(ckpt, precision="fp16", options={"ptq": "nncf"}), has_ranges=False)
    with pytest.raises(ConfigError, match="unknown; use one of nncf"):
        check_request(ExportRequest(ckpt, precision="int8", options={"ptq": "pot"}), has_ranges=False)
    with pytest.raises(CheckpointError, match="no INT8 ranges.*--ptq nncf"):
        check_request(ExportRequest(ckpt, precision="int8"), has_ranges=False)
    assert check_request(ExportRequest(ckpt, precision="int8", options={"ptq": "nncf"}), has_ranges=False) == "nncf"
    assert check_request(ExportRequest(ckpt, precision="int8"), has_ranges=True) is None
