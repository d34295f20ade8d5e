"""Targets without heavy runtimes: artifact folders and meta.json, the Jetson build plan (trtexec
lines and TensorRT API calls per major version), Core ML's quantize/dequantize view, option checks."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_tensorrt import FakeTensorRT, install

from edgeseg.errors import CheckpointError, ConfigError, MissingDependencyError, TargetError
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


def _bundle(tmp_path: Path, precision: str, dla: int | None = None, inputs: dict | None = None, fp16_onnx: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model_fp16.onnx").write_bytes(b"onnx16")
    cfg = T.build_config(precision, inputs or STATIC, dla_core=dla, workspace_gb=2.0, fp16_onnx=fp16_onnx)
    (tmp_path / "build.json").write_text(json.dumps(cfg))
    return tmp_path


def _build(monkeypatch: pytest.MonkeyPatch, trt: FakeTensorRT, bundle: Path, **kw: Any) -> list[tuple]:
    install(monkeypatch, trt)
    engine, log = TE.build_engine(bundle, **kw)
    assert engine == bundle / "model.engine" and engine.read_bytes() == trt.plans[-1]
    assert f"Init builder kernel library (TensorRT {trt.__version__})" in log.read_text()
    return trt.calls


def _flags(calls: list[tuple]) -> list[str]:
    return [c[1] for c in calls if c[0] == "flag"]


def test_build_int8_trt10_strongly_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = FakeTensorRT("10.7.0")
    calls = _build(monkeypatch, trt, _bundle(tmp_path, "int8"))
    assert ("network", 1 << 1) in calls and not _flags(calls)  # STRONGLY_TYPED is 1 in 10.x (EXPLICIT_BATCH, 0, is not asked)
    assert ("pool", trt.MemoryPoolType.WORKSPACE, 2 << 30) in calls and ("parse", "model.onnx") in calls
    assert ("cache_in", b"") in calls and ("set_cache", False) in calls
    assert (tmp_path / "timing.cache").read_bytes() == b"[timings of a 4-byte network]"  # the build's timings, saved


def test_build_fp16_trt10_sets_fp16_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _build(monkeypatch, FakeTensorRT("10.3.0"), _bundle(tmp_path, "fp16"))
    assert ("network", 0) in calls and _flags(calls) == ["FP16"]


def test_build_trt10_fp32_and_the_fp16_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _build(monkeypatch, FakeTensorRT("10.13.0"), _bundle(tmp_path / "a", "fp32"))
    assert ("network", 0) in calls and not _flags(calls)
    calls = _build(monkeypatch, FakeTensorRT("10.13.0"), _bundle(tmp_path / "b", "int8"), fp16=True)
    assert ("network", 0) in calls and _flags(calls) == ["FP16", "INT8"]  # fp16=True: weakly typed INT8 + FP16 kernels


def test_build_trt11_never_uses_removed_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = FakeTensorRT("11.4.1")
    calls = _build(monkeypatch, trt, _bundle(tmp_path, "fp16", dla=0))
    assert ("network", 0) in calls and ("parse", "model_fp16.onnx") in calls
    assert _flags(calls) == ["GPU_FALLBACK"]
    assert ("set", "default_device_type", trt.DeviceType.DLA) in calls and ("set", "DLA_core", 0) in calls


@pytest.mark.parametrize("fp16", [None, True])
def test_build_int8_trt11_is_strongly_typed_without_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fp16: bool | None) -> None:
    calls = _build(monkeypatch, FakeTensorRT("11.0.0"), _bundle(tmp_path, "int8"), fp16=fp16)
    # 11.x is always strongly typed: no creation flag (its STRONGLY_TYPED, 0, is deprecated and ignored), no precision flag
    assert ("network", 0) in calls and ("parse", "model.onnx") in calls and not _flags(calls)


def test_build_int8_dla_trt10_is_weakly_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = FakeTensorRT("10.7.0")
    calls = _build(monkeypatch, trt, _bundle(tmp_path, "int8", dla=1), workspace_gb=1.0)
    assert ("network", 0) in calls and _flags(calls) == ["FP16", "INT8", "GPU_FALLBACK"]
    assert ("pool", trt.MemoryPoolType.WORKSPACE, 1 << 30) in calls


def test_build_profile_and_timing_cache_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dyn = {"input": {"min": SHAPE, "opt": SHAPE, "max": [8, 3, 64, 64]}}
    bundle = _bundle(tmp_path, "int8", inputs=dyn)
    (bundle / "timing.cache").write_bytes(b"OLD")
    calls = _build(monkeypatch, FakeTensorRT("10.7.0"), bundle)
    assert ("profile", [("input", SHAPE, SHAPE, [8, 3, 64, 64])]) in calls and ("cache_in", b"OLD") in calls
    assert (bundle / "timing.cache").read_bytes() == b"OLD[timings of a 4-byte network]"
    other = tmp_path / "shared.cache"
    _build(monkeypatch, FakeTensorRT("10.7.0"), bundle, timing_cache=other)
    assert other.read_bytes() == b"[timings of a 4-byte network]" and (bundle / "timing.cache").read_bytes().startswith(b"OLD")


def test_failed_build_writes_only_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path, "int8")
    install(monkeypatch, FakeTensorRT("10.7.0", build_ok=False))
    with pytest.raises(
        TargetError, match=r"failed to build .*model.onnx' \(\[ERROR\] .*Could not find any implementation.*see .*build.log"
    ):
        TE.build_engine(bundle)
    assert "[ERROR] IBuilder::buildSerializedNetwork" in (bundle / "build.log").read_text()
    assert not (bundle / "model.engine").exists() and not (bundle / "timing.cache").exists()
    (bundle / "timing.cache").write_bytes(b"OLD")
    with pytest.raises(TargetError, match="build.log"):
        TE.build_engine(bundle)
    assert (bundle / "timing.cache").read_bytes() == b"OLD" and not (bundle / "model.engine").exists()


def test_build_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path, "int8", dla=1)
    install(monkeypatch, FakeTensorRT("10.7.0", dla_cores=1))
    with pytest.raises(TargetError, match="DLA core 1 does not exist"):
        TE.build_engine(bundle)
    install(monkeypatch, FakeTensorRT("10.7.0", parse_ok=False))
    with pytest.raises(
        TargetError, match=rf"cannot parse .*Unsupported ONNX op: Foo.*; run 'edgeseg check {re.escape(str(bundle))} --trt-version 10'$"
    ):
        TE.build_engine(bundle, dla_core=0)
    install(monkeypatch, FakeTensorRT("8.6.1"))
    with pytest.raises(TargetError, match="install TensorRT 10.x or 11.x"):
        TE.build_engine(bundle)
    (bundle / "model.onnx").unlink()
    install(monkeypatch, FakeTensorRT("10.7.0"))
    with pytest.raises(TargetError, match="model.onnx' is missing; re-export the bundle"):
        TE.build_engine(bundle)


def test_build_trt11_fp16_needs_the_fp16_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = FakeTensorRT("11.4.0")
    install(monkeypatch, trt)
    with pytest.raises(TargetError, match="TensorRT 11 builds FP16 from an FP16 ONNX, which .* lacks; re-export with onnxruntime"):
        TE.build_engine(_bundle(tmp_path / "a", "fp16", fp16_onnx=False))
    assert trt.calls == []  # refused before TensorRT was asked for anything
    (_bundle(tmp_path / "b", "fp16") / "model_fp16.onnx").unlink()
    with pytest.raises(TargetError, match="model_fp16.onnx' is missing"):
        TE.build_engine(tmp_path / "b")


def test_build_json_is_checked_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeTensorRT("10.7.0"))
    with pytest.raises(CheckpointError, match="has no build.json, so it is not a Jetson bundle; re-export"):
        TE.build_engine(tmp_path)
    good = json.loads((_bundle(tmp_path, "int8") / "build.json").read_text())
    for bad, why in [
        ("{not json", "is not readable JSON"),
        ({**good, "precision": "int4"}, "has precision 'int4', not fp32, fp16 or int8"),
        ({**good, "onnx": {"10": "../../etc/model.onnx", "11": "model.onnx"}}, "lacks the ONNX file name per TensorRT major"),
        ({**good, "workspace_gb": -1}, "has workspace_gb -1, not a size in GB"),
        ({**good, "dla_core": "0"}, "has dla_core '0', not a core number or null"),
        ({**good, "dla_core": 5}, "has dla_core 5, not a Jetson DLA core \\(0 or 1\\)"),
        ({**good, "inputs": {"input": {"min": [1, 3], "opt": [1, 3], "max": [0, 3]}}}, "input 'input' has shapes"),
    ]:
        (tmp_path / "build.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(CheckpointError, match=why):
            TE.build_engine(tmp_path)


def test_build_without_tensorrt_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, None)
    with pytest.raises(MissingDependencyError, match=r'pip install "edgeseg\[tensorrt\]"'):
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
