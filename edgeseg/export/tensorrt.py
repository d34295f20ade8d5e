"""Jetson target: a TensorRT bundle (ONNX + build.json + trtexec lines), engine build, runner.

TensorRT needs an NVIDIA GPU, so the bundle is built here and checked statically (edgeseg.export.
preflight); the engine is built on the device, by `edgeseg bench` on first use (cached next to
the bundle) or by `edgeseg export --build-engine` where tensorrt is installed.

Precision per TensorRT major (both documented in build.json and as trtexec lines):
- INT8: the Q/DQ ONNX of a calibrated/QAT checkpoint, as a strongly typed network: TensorRT
  takes the scales from the graph and never calibrates. TensorRT 11 is always strongly typed
  (it removed --int8/--fp16, BuilderFlag.INT8/FP16 and implicit calibration); on 10.x strong
  typing is asked for (--stronglyTyped / NetworkDefinitionCreationFlag.STRONGLY_TYPED), except
  on DLA, where TensorRT 10 builds with the INT8+FP16 flags (weakly typed, still explicit Q/DQ).
- FP16: on 10.x the float ONNX with --fp16 (BuilderFlag.FP16); on 11.x an FP16 ONNX
  (model_fp16.onnx, float weights/activations converted by onnxruntime's float16 tool, FP32
  model inputs/outputs kept), built strongly typed.
- FP32: the float ONNX, no flags.
DLA (`dla_core`) runs FP16/INT8 only, with GPU fallback for the layers it cannot run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, NumericalError, TargetError, missing_dependency
from edgeseg.export.base import ExportRequest, Loaded, package_version
from edgeseg.fsutil import write_bytes, write_json, write_text

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"
BUILD_FILE = "build.json"
ENGINE_FILE = "model.engine"
CACHE_FILE = "timing.cache"
LOG_FILE = "build.log"
PREFLIGHT_FILE = "preflight.txt"
DEFAULT_WORKSPACE_GB = 2.0


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise missing_dependency("tensorrt", "tensorrt") from None
    return tensorrt


def _dims(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def strongly_typed(precision: str, trt_major: int, dla_core: int | None) -> bool:
    """Whether the network is built strongly typed (see the module docstring)."""
    if trt_major >= 11:
        return True
    return precision == "int8" and dla_core is None


def trtexec_command(cfg: dict[str, Any], trt_major: int) -> str:
    """The trtexec line equivalent to build_engine() for a TensorRT major version."""
    precision, dla = cfg["precision"], cfg.get("dla_core")
    onnx_file = cfg["onnx"][str(trt_major)]
    args = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={ENGINE_FILE}"]
    if trt_major < 11:
        if strongly_typed(precision, trt_major, dla):
            args.append("--stronglyTyped")
        else:
            args += {"int8": ["--int8", "--fp16"], "fp16": ["--fp16"], "fp32": []}[precision]
    if dla is not None:
        args += [f"--useDLACore={dla}", "--allowGPUFallback"]
    for name, prof in cfg["inputs"].items():
        if not (prof["min"] == prof["opt"] == prof["max"]):
            args += [
                f"--minShapes={name}:{_dims(prof['min'])}",
                f"--optShapes={name}:{_dims(prof['opt'])}",
                f"--maxShapes={name}:{_dims(prof['max'])}",
            ]
    args += [f"--memPoolSize=workspace:{round(cfg['workspace_gb'] * 1024)}M", f"--timingCacheFile={CACHE_FILE}"]
    return " ".join(args)


def build_config(
    precision: str, inputs: dict[str, dict[str, list[int]]], *, dla_core: int | None, workspace_gb: float, fp16_onnx: bool
) -> dict[str, Any]:
    """build.json: everything build_engine and trtexec need, per TensorRT major."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"--precision {precision} is unknown; use fp32, fp16 or int8")
    if dla_core is not None and precision == "fp32":
        raise ConfigError("--dla runs FP16 or INT8 only; use --precision fp16 or int8 with --dla")
    if workspace_gb <= 0:
        raise ConfigError(f"workspace {workspace_gb} GB is invalid; use a positive size, e.g. 2")
    cfg: dict[str, Any] = {
        "precision": precision,
        "workspace_gb": workspace_gb,
        "dla_core": dla_core,
        "gpu_fallback": dla_core is not None,
        "inputs": inputs,
        "engine": ENGINE_FILE,
        "timing_cache": CACHE_FILE,
        "onnx": {"10": MODEL_FILE, "11": FP16_FILE if (precision == "fp16" and fp16_onnx) else MODEL_FILE},
    }
    cfg["strongly_typed"] = {str(v): strongly_typed(precision, v, dla_core) for v in (10, 11)}
    cfg["trtexec"] = {str(v): trtexec_command(cfg, v) for v in (10, 11)}
    if precision == "fp16" and not fp16_onnx:
        cfg["trtexec"]["11"] = (
            "unavailable: TensorRT 11 needs an FP16 ONNX; install onnxruntime and re-export (or run modelopt.onnx.autocast)"
        )
    return cfg


def onnx_inputs(path: Path, max_batch: int = 8) -> dict[str, dict[str, list[int]]]:
    """Input shapes as an optimisation profile (min = opt = max for a static model)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims[1:]):
            raise TargetError(f"input '{inp.name}' of '{path}' has dynamic spatial dims {dims}; export with a fixed --input-size")
        if dims[0] > 0:
            out[inp.name] = {"min": dims, "opt": dims, "max": dims}
        else:
            one = [1, *dims[1:]]
            out[inp.name] = {"min": one, "opt": one, "max": [max_batch, *dims[1:]]}
    return out


def fp16_onnx(src: Path, dst: Path) -> bool:
    """Convert float weights and activations to FP16, keeping FP32 model inputs/outputs.

    Uses onnxruntime's float16 converter (from onnxconverter-common) and its topological sort
    (the converter appends the I/O casts at the end of the graph). Returns False when it is not
    installed; build.json then says how to make the FP16 ONNX on the device.
    """
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError:
        return False
    half = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    half.topological_sort()
    onnx.checker.check_model(half.model)
    write_bytes(dst, half.model.SerializeToString())
    return True


def fp16_agreement(fp32_path: Path, fp16_path: Path, meta: dict[str, Any], count: int = 4) -> dict[str, Any]:
    """Argmax agreement of the FP16 ONNX with the FP32 ONNX in onnxruntime, on the artifact's data."""
    from edgeseg.export.common import argmax_agreement, onnx_reference, verification_images

    images, desc = verification_images(meta, count)
    ref, half = onnx_reference(fp32_path, images), onnx_reference(fp16_path, images)
    return {
        "reference": "onnxruntime FP32 ONNX",
        "data": desc,
        "argmax_agreement": argmax_agreement(half, ref),
        "max_abs_diff": float(np.abs(half - ref).max()),
    }


class JetsonTarget:
    """The Target protocol for Jetson/TensorRT (see edgeseg.export.base)."""

    name = "jetson"
    runtime = "tensorrt"
    runtime_label = "TensorRT"
    extra = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    variants: tuple[tuple[str, str | None], ...] = (("int8", None),)
    precision_hints: tuple[str, ...] = ()

    def is_available(self) -> tuple[bool, str]:
        # The bundle needs onnx only; building and running an engine need tensorrt + a GPU.
        try:
            import onnx  # noqa: F401
        except ImportError:
            return False, str(missing_dependency("onnx", "onnx"))
        return True, ""

    def export(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        return export_bundle(request, out)

    def can_run_here(self) -> tuple[bool, str]:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            return (
                False,
                'TensorRT needs an NVIDIA GPU with tensorrt installed (JetPack\'s on a Jetson, or pip install "edgeseg[tensorrt]")',
            )
        return True, ""

    def describe(self, meta: dict[str, Any], folder: Path | None) -> str:
        report = (folder / "preflight.txt") if folder is not None else None
        head = [ln for ln in report.read_text().splitlines() if ln.startswith("#")] if report is not None and report.is_file() else []
        return "preflight " + "; ".join(h.lstrip("# ") for h in head) + f" (see {report})"

    def load(self, artifact: Path, meta: dict[str, Any], *, threads: int | None = None, precision_hint: str | None = None) -> Loaded:
        ok, why = self.can_run_here()
        if not ok:
            raise TargetError(f"cannot run '{artifact}' here: {why}")
        runner = TensorRTRunner(Path(artifact))
        return Loaded(runner, self.runtime, package_version("tensorrt"), _provider(Path(artifact)), None, runner.static_batch)


def _provider(bundle: Path) -> str:
    """GPU, or the DLA core the engine was built for (with GPU fallback), from build.json."""
    build = bundle / "build.json"
    try:
        dla = json.loads(build.read_text()).get("dla_core") if build.is_file() else None
    except (OSError, json.JSONDecodeError):
        dla = None
    return f"DLA{dla} (GPU fallback)" if dla is not None else "GPU"


def export_bundle(request: ExportRequest, out: Path) -> dict[str, Any]:
    """Write the Jetson bundle into `out`: ONNX (+ FP16 ONNX), build.json, preflight; return meta."""
    from edgeseg.export.common import source_onnx
    from edgeseg.export.prepare import load_for_export, tool_versions

    opts = request.options
    dla, trt_major = opts.get("dla"), int(opts.get("trt_version", 10))
    model, ckpt, meta = load_for_export(request)
    if request.precision == "int8" and opts.get("ptq"):
        raise ConfigError("--ptq applies to OpenVINO only; TensorRT builds the Q/DQ ONNX of a calibrated or QAT checkpoint")
    report = source_onnx(model, out / MODEL_FILE, meta=meta, int8=request.precision == "int8", dynamic_batch=request.dynamic_batch)
    has_fp16 = request.precision == "fp16" and fp16_onnx(out / MODEL_FILE, out / FP16_FILE)
    verification = {
        "reference": "PyTorch (export_onnx)",
        "argmax_agreement": report.get("argmax_agreement"),
        "max_abs_diff": report.get("max_abs_diff"),
    }
    if has_fp16:
        verification = {"fp16_onnx": fp16_agreement(out / MODEL_FILE, out / FP16_FILE, meta, int(opts.get("verify_images", 4)))}
        agree, need = verification["fp16_onnx"]["argmax_agreement"], float(opts.get("min_agreement", 0.995))
        if agree < need:
            raise NumericalError(
                f"the FP16 ONNX agrees with FP32 on {agree:.2%} of pixels (< {need:.1%}); use TensorRT 10 with --fp16 or report this"
            )
    inputs = onnx_inputs(out / MODEL_FILE)
    workspace = float(opts.get("workspace_gb", DEFAULT_WORKSPACE_GB))
    cfg = build_config(request.precision, inputs, dla_core=dla, workspace_gb=workspace, fp16_onnx=has_fp16)
    preflight(out, cfg, trt_major)
    write_json(out / BUILD_FILE, cfg)
    io = _io_names(out / MODEL_FILE)
    meta.update({
        "target": "jetson", "precision": request.precision, "model_file": MODEL_FILE, "input_name": io[0], "output_name": io[1],
        "tool_versions": tool_versions("torch", "onnx", "onnxruntime", "tensorrt"),
        "tensorrt": {"build": BUILD_FILE, "trt_version": trt_major, "dla_core": dla, "preflight": PREFLIGHT_FILE},
        "verification": verification,
    })  # fmt: skip
    if request.precision != "int8":
        meta["quant"] = None
    if opts.get("build_engine"):
        build_engine(out, workspace_gb=workspace, dla_core=dla)
    return meta


def preflight(bundle: Path, cfg: dict[str, Any], trt_major: int) -> None:
    """Check the bundle's ONNX for TensorRT 10 and 11 into preflight.txt; errors for `trt_major` raise."""
    from edgeseg.export.preflight import check_onnx

    lines, errors = [], []
    for major in (10, 11):
        name = cfg["onnx"][str(major)]
        found = check_onnx(bundle / name, "jetson", trt_version=major, dla=cfg["dla_core"], shapes=cfg["inputs"])
        n_err = sum(v.severity == "error" for v in found)
        lines += [f"# TensorRT {major}.x ({name}): {n_err} errors, {len(found) - n_err} warnings", *(str(v) for v in found)]
        errors += [v for v in found if v.severity == "error" and major == trt_major]
    write_text(bundle / PREFLIGHT_FILE, "\n".join(lines) + "\n")
    if errors:
        raise TargetError(f"TensorRT {trt_major} preflight found {len(errors)} errors, first: {errors[0]}; 'edgeseg check' lists them all")


def _io_names(path: Path) -> tuple[str, str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return graph.input[0].name, graph.output[0].name


class _BuildLogger:
    """A trt.ILogger that keeps every message for build.log (and logs warnings and errors)."""

    def __new__(cls, trt: Any, lines: list[str]) -> Any:
        class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                lines.append(f"[{severity.name}] {msg}")
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.WARNING):
                    log.warning("TensorRT: %s", msg)

        return Logger()


def build_engine(
    bundle_dir: str | Path,
    *,
    workspace_gb: float | None = None,
    dla_core: int | None = None,
    timing_cache: str | Path | None = None,
    fp16: bool | None = None,
) -> tuple[Path, Path]:
    """Build bundle_dir/model.engine with the TensorRT Python API (10.x or 11.x).

    Args:
        bundle_dir: a Jetson artifact folder (build.json + ONNX).
        workspace_gb: workspace memory pool limit (default: build.json's).
        dla_core: DLA core with GPU fallback (default: build.json's; None: GPU only).
        timing_cache: timing cache file, loaded when present and saved after the build
            (default: bundle_dir/timing.cache).
        fp16: TensorRT 10 only: allow FP16 kernels in a weakly typed network (default: for
            precision fp16, and for INT8 on DLA).

    Returns:
        (engine path, build log path).
    """
    trt = _trt()
    bundle = Path(bundle_dir)
    cfg = json.loads((bundle / BUILD_FILE).read_text())
    major = int(trt.__version__.split(".")[0])
    if major not in (10, 11):
        raise TargetError(f"tensorrt {trt.__version__} is not supported; install TensorRT 10.x or 11.x")
    dla = cfg.get("dla_core") if dla_core is None else dla_core
    precision = cfg["precision"]
    typed = strongly_typed(precision, major, dla) and not (major < 11 and fp16)
    onnx_path = bundle / cfg["onnx"][str(major)]
    if major >= 11 and precision == "fp16" and cfg["onnx"]["11"] != FP16_FILE:
        raise TargetError(f"TensorRT 11 builds FP16 from an FP16 ONNX, which '{bundle}' lacks; re-export with onnxruntime installed")
    lines: list[str] = []
    logger = _BuildLogger(trt, lines)
    builder = trt.Builder(logger)
    # The parser owns the weights it read: keep it alive until the engine is serialized.
    network, _parser = _parse(trt, builder, logger, onnx_path, typed=typed and major < 11)  # 11.x is always strongly typed
    config = _builder_config(trt, builder, network, cfg, major=major, typed=typed, dla=dla, workspace_gb=workspace_gb, fp16=fp16)
    cache_path = Path(timing_cache) if timing_cache else bundle / CACHE_FILE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    log_path = bundle / LOG_FILE
    write_text(log_path, "\n".join(lines) + "\n")
    if serialized is None:
        last = next((ln for ln in reversed(lines) if "ERROR" in ln), "no error message")
        raise TargetError(f"TensorRT failed to build '{onnx_path}' ({last[:200]}); see {log_path}")
    engine_path = bundle / ENGINE_FILE
    write_bytes(engine_path, bytes(serialized))
    write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return engine_path, log_path


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, *, typed: bool) -> tuple[Any, Any]:
    """(network, parser): a network definition (strongly typed when asked) parsed from the ONNX file."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not onnx_path.is_file():
        raise TargetError(f"'{onnx_path}' is missing; re-export the bundle")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TargetError(f"TensorRT cannot parse '{onnx_path}': {errors[:300]}; run 'edgeseg check {onnx_path} --target jetson'")
    return network, parser


def _builder_config(
    trt: Any,
    builder: Any,
    network: Any,
    cfg: dict[str, Any],
    *,
    major: int,
    typed: bool,
    dla: int | None,
    workspace_gb: float | None,
    fp16: bool | None,
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int((workspace_gb or cfg["workspace_gb"]) * (1 << 30)))
    precision = cfg["precision"]
    if not typed:  # weakly typed: TensorRT 10 only (11.x removed these flags)
        if precision in ("fp16", "int8") or fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ: scales come from the graph
    if dla is not None:
        if builder.num_DLA_cores <= dla:
            raise TargetError(
                f"DLA core {dla} does not exist here ({builder.num_DLA_cores} DLA cores); use --dla 0..{max(builder.num_DLA_cores - 1, 0)} or leave it out"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    dynamic = {n: p for n, p in cfg["inputs"].items() if not (p["min"] == p["opt"] == p["max"])}
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, p in dynamic.items():
            profile.set_shape(name, p["min"], p["opt"], p["max"])
        config.add_optimization_profile(profile)
    return config


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.8
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            raise missing_dependency("cuda-python", "tensorrt") from None
    return cudart


def _check(cudart: Any, result: Any) -> Any:
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise TargetError(f"CUDA call failed ({err.name}); this needs an NVIDIA GPU with a working driver")
    return values[0] if len(values) == 1 else values


class TensorRTRunner:
    """A TensorRT engine (built from the bundle on first use and cached): `run(x)` -> logits.

    Uses TensorRT's name-based tensor API (set_input_shape / set_tensor_address /
    execute_async_v3) with device buffers from cuda-python.
    """

    def __init__(self, bundle: Path, workspace_gb: float | None = None, dla_core: int | None = None) -> None:
        trt = _trt()
        self.cudart = cudart = _cudart()
        if _check(cudart, cudart.cudaGetDeviceCount()) < 1:
            raise TargetError("no NVIDIA GPU found; TensorRT engines run on a Jetson or a machine with an NVIDIA GPU")
        engine_path = bundle / ENGINE_FILE
        if not engine_path.is_file():
            build_engine(bundle, workspace_gb=workspace_gb, dla_core=dla_core)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise TargetError(f"'{engine_path}' was built by another TensorRT or GPU; delete it and it is rebuilt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _check(cudart, cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        batch = self.engine.get_tensor_shape(self.inputs[0])[0]
        self.static_batch = int(batch) if batch > 0 else None

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart, self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart, self.cudart.cudaMalloc(nbytes))
            self.buffers[name] = (ptr, nbytes)
        self.context.set_tensor_address(name, ptr)
        return ptr

    def run(self, x: np.ndarray) -> np.ndarray:
        cudart, kind = self.cudart, self.cudart.cudaMemcpyKind
        x = np.ascontiguousarray(x, dtype=self.dtypes[self.inputs[0]])
        self.context.set_input_shape(self.inputs[0], tuple(x.shape))
        ptr = self._buffer(self.inputs[0], x.nbytes)
        _check(cudart, cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        out = np.empty(tuple(self.context.get_tensor_shape(self.outputs[0])), dtype=self.dtypes[self.outputs[0]])
        optr = self._buffer(self.outputs[0], out.nbytes)
        for extra in self.outputs[1:]:
            shape = tuple(self.context.get_tensor_shape(extra))
            self._buffer(extra, int(np.prod(shape)) * self.dtypes[extra].itemsize)
        if not self.context.execute_async_v3(self.stream):
            raise TargetError("TensorRT inference failed (execute_async_v3 returned False); see the TensorRT log")
        _check(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, optr, out.nbytes, kind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart, cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32, copy=False)

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        for ptr, _ in getattr(self, "buffers", {}).values():
            if cudart is not None:
                cudart.cudaFree(ptr)


TARGET = JetsonTarget()
