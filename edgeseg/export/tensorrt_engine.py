"""Jetson engine side: build a TensorRT engine from a Jetson bundle, and run it.

This is the half of the Jetson target that runs on the device (edgeseg.export.tensorrt writes
the bundle): `build_engine` turns build.json + the ONNX into model.engine with the TensorRT
Python API (10.x or 11.x, see edgeseg.export.tensorrt for the precision rules), and
`TensorRTRunner` runs it through cuda-python. It imports numpy and, inside functions, tensorrt
and cuda-python only, never torch, so `edgeseg bench` works where only JetPack is installed.
"""

from __future__ import annotations

import ctypes
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.constants import choices
from edgeseg.errors import CheckpointError, TargetError, missing_dependency, printable
from edgeseg.fsutil import write_bytes, write_text
from edgeseg.sizes import DLA_CORES

log = logging.getLogger(__name__)

# The bundle's files this side reads (build.json, the ONNX) and writes (engine, cache, log).
FP16_FILE = "model_fp16.onnx"
BUILD_FILE = "build.json"
ENGINE_FILE = "model.engine"
CACHE_FILE = "timing.cache"
LOG_FILE = "build.log"


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise missing_dependency("tensorrt", "tensorrt") from None
    return tensorrt


def strongly_typed(precision: str, trt_major: int, dla_core: int | None) -> bool:
    """Whether the network is built strongly typed (see edgeseg.export.tensorrt's docstring)."""
    if trt_major >= 11:
        return True
    return precision == "int8" and dla_core is None


class _TrtLogger:
    """A trt.ILogger that keeps every message (for build.log and error messages) and logs warnings and errors."""

    def __new__(cls, trt: Any, lines: list[str]) -> Any:
        class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                lines.append(f"[{severity.name}] {msg}")
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.WARNING):
                    log.warning("TensorRT: %s", msg)

        return Logger()


def _last_error(lines: list[str]) -> str:
    return next((ln for ln in reversed(lines) if ln.startswith(("[ERROR]", "[INTERNAL_ERROR]"))), "no error message")[:200]


def _profile_problem(name: Any, prof: Any) -> str | None:
    if not isinstance(prof, dict) or any(not isinstance(prof.get(k), list) for k in ("min", "opt", "max")):
        return f"input {printable(repr(name))} lacks its min/opt/max shapes"
    dims = [prof["min"], prof["opt"], prof["max"]]
    if len({len(d) for d in dims}) != 1 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for d in dims for v in d):
        return f"input {printable(repr(name))} has shapes {dims}, not three lists of positive sizes of one rank"
    return None


def _build_config_problem(cfg: Any) -> str | None:
    """What is wrong with a build.json (None: nothing): the keys build_engine and the runner use."""
    if not isinstance(cfg, dict):
        return "is not a JSON object"
    if cfg.get("precision") not in ("fp32", "fp16", "int8"):
        return f"has precision {printable(repr(cfg.get('precision')))}, not fp32, fp16 or int8"
    names = cfg.get("onnx")
    if not isinstance(names, dict) or not all(isinstance(names.get(v), str) and Path(names[v]).name == names[v] for v in ("10", "11")):
        return "lacks the ONNX file name per TensorRT major ('onnx': {'10': ..., '11': ...}, names inside the bundle)"
    ws, dla = cfg.get("workspace_gb"), cfg.get("dla_core")
    if isinstance(ws, bool) or not isinstance(ws, (int, float)) or not 0 < ws <= 1024:
        return f"has workspace_gb {printable(repr(ws))}, not a size in GB"
    if dla is not None and (isinstance(dla, bool) or not isinstance(dla, int) or dla < 0):
        return f"has dla_core {printable(repr(dla))}, not a core number or null"
    if dla is not None and dla not in DLA_CORES:
        return f"has dla_core {dla}, not a Jetson DLA core ({choices(DLA_CORES)})"
    if not isinstance(cfg.get("inputs"), dict) or not cfg["inputs"]:
        return "lacks the input shapes ('inputs')"
    return next(filter(None, (_profile_problem(n, p) for n, p in cfg["inputs"].items())), None)


def read_build_config(bundle: Path) -> dict[str, Any]:
    """build.json of a Jetson bundle, checked before any TensorRT work starts.

    Raises:
        CheckpointError: the file is missing, not JSON, or lacks or mangles a key.
    """
    path, fix = bundle / BUILD_FILE, "re-export the bundle with 'edgeseg export CHECKPOINT --target jetson'"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"'{bundle}' has no {BUILD_FILE}, so it is not a Jetson bundle; {fix}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON ({printable(exc)}); {fix}") from None
    problem = _build_config_problem(cfg)
    if problem:
        raise CheckpointError(f"'{path}' {problem}; {fix}")
    return cfg


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
    bundle = Path(bundle_dir)
    cfg = read_build_config(bundle)
    trt = _trt()
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
    logger = _TrtLogger(trt, lines)
    builder = trt.Builder(logger)
    # The parser owns the weights it read: keep it alive until the engine is serialized.
    network, _parser = _parse(trt, builder, logger, onnx_path, typed=typed and major < 11)  # 11.x is always strongly typed
    config = _builder_config(trt, builder, network, cfg, major=major, typed=typed, dla=dla, workspace_gb=workspace_gb, fp16=fp16)
    cache_path = Path(timing_cache) if timing_cache else bundle / CACHE_FILE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    return _write_engine(bundle, serialized, config, cache_path, lines, onnx_path)


def _write_engine(bundle: Path, serialized: Any, config: Any, cache_path: Path, lines: list[str], onnx_path: Path) -> tuple[Path, Path]:
    """Write build.log, then (when the build succeeded) the engine and the updated timing cache."""
    log_path = bundle / LOG_FILE
    write_text(log_path, "\n".join(lines) + "\n")
    if serialized is None:
        raise TargetError(f"TensorRT failed to build '{onnx_path}' ({_last_error(lines)}); see {log_path}")
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
        raise TargetError(
            f"TensorRT cannot parse '{onnx_path}': {errors[:300]}; run 'edgeseg check {onnx_path.parent} --trt-version {trt.__version__.split('.')[0]}'"
        )
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


def _deserialize(trt: Any, logger: Any, lines: list[str], engine_path: Path, dla: int | None) -> tuple[Any, Any]:
    """(runtime, engine) for model.engine, the runtime's DLA core set first for a DLA engine."""
    runtime = trt.Runtime(logger)
    if dla is not None:
        cores = int(runtime.num_DLA_cores)
        if not 0 <= dla < cores:
            raise TargetError(
                f"'{engine_path}' runs on DLA core {dla}, which this device lacks ({cores} DLA cores); "
                "run it on a Jetson with DLA, or re-export without --dla"
            )
        runtime.DLA_core = int(dla)  # TensorRT takes the core from the runtime, before it deserializes a DLA engine
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise TargetError(f"'{engine_path}' was built by another TensorRT or GPU ({_last_error(lines)}); delete it and it is rebuilt")
    return runtime, engine


def _dims(shape: Any) -> str:
    return "x".join(str(d) for d in shape) if shape else "?"


class TensorRTRunner:
    """A TensorRT engine (built from the bundle on first use and cached): `run(x)` -> logits.

    Uses TensorRT's name-based tensor API (set_input_shape / set_tensor_address /
    execute_async_v3) with device buffers from cuda-python. The DLA core comes from build.json
    unless `dla_core` is given.

    The input and the logits pass through pinned (page-locked) host buffers (cudaMallocHost), so
    both copies are DMA transfers queued on the stream, not staged through pageable memory. Four
    CUDA events around the host-to-device copy, the engine and the device-to-host copy time each
    on the device: after every run `last_times` holds their milliseconds ({"h2d", "engine",
    "d2h"}), which bench records beside the wall-clock latency. `run` returns a view of the pinned
    output buffer, valid until the next call (copy it to keep it).
    """

    def __init__(self, bundle: Path, workspace_gb: float | None = None, dla_core: int | None = None) -> None:
        trt = _trt()
        self.cudart = cudart = _cudart()
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.host: dict[str, tuple[int, int]] = {}  # name -> (pinned host pointer, bytes)
        self.events: list[Any] = []
        self.last_times: dict[str, float] = {}
        if _check(cudart, cudart.cudaGetDeviceCount()) < 1:
            raise TargetError("no NVIDIA GPU found; TensorRT engines run on a Jetson or a machine with an NVIDIA GPU")
        bundle = Path(bundle)
        cfg = read_build_config(bundle)
        engine_path = bundle / ENGINE_FILE
        if not engine_path.is_file():
            build_engine(bundle, workspace_gb=workspace_gb, dla_core=dla_core)
        self.profiles: dict[str, Any] = cfg["inputs"]
        self.log_lines: list[str] = []
        self.logger = _TrtLogger(trt, self.log_lines)  # TensorRT needs its logger alive as long as the engine
        dla = cfg.get("dla_core") if dla_core is None else dla_core
        self.dla_core: int | None = dla  # bench's provider label: "GPU" or "DLA n (GPU fallback)"
        self.runtime, self.engine = _deserialize(trt, self.logger, self.log_lines, engine_path, dla)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1 or not self.outputs:
            raise TargetError(
                f"'{engine_path}' has inputs {self.inputs} and outputs {self.outputs}, not one image in and logits out; re-export"
            )
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _check(cudart, cudart.cudaStreamCreate())
        for _ in range(4):  # before the input copy, after it, after the engine, after the output copy
            self.events.append(_check(cudart, cudart.cudaEventCreate()))
        batch = self.engine.get_tensor_shape(self.inputs[0])[0]
        self.static_batch = int(batch) if batch > 0 else None

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart, self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart, self.cudart.cudaMalloc(nbytes))
            self.buffers[name] = (ptr, nbytes)
        if not self.context.set_tensor_address(name, ptr):
            raise TargetError(f"TensorRT refused the buffer of '{name}' ({_last_error(self.log_lines)}); report this with the bundle")
        return ptr

    def _host(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A pinned host array of `shape` for tensor `name` (its buffer grows, never shrinks)."""
        dtype = self.dtypes[name]
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        ptr, size = self.host.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart, self.cudart.cudaFreeHost(ptr))
            ptr = _check(self.cudart, self.cudart.cudaMallocHost(nbytes))
            self.host[name] = (ptr, nbytes)
        return np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=dtype, count=count).reshape(shape)

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, shape):
            prof = self.profiles.get(name, {})
            raise TargetError(
                f"the engine takes '{name}' from {_dims(prof.get('min'))} to {_dims(prof.get('max'))}, not {_dims(shape)}; "
                "pass a batch in that range, or re-export with --dynamic-batch"
            )

    def run(self, x: np.ndarray) -> np.ndarray:
        cudart, kind = self.cudart, self.cudart.cudaMemcpyKind
        x = np.asarray(x)
        self._set_input_shape(self.inputs[0], tuple(x.shape))
        host_in = self._host(self.inputs[0], tuple(x.shape))
        np.copyto(host_in, x, casting="unsafe")  # into pinned memory (and the engine's input dtype)
        iptr = self._buffer(self.inputs[0], host_in.nbytes)
        host_out = self._host(self.outputs[0], tuple(self.context.get_tensor_shape(self.outputs[0])))
        optr = self._buffer(self.outputs[0], host_out.nbytes)
        for extra in self.outputs[1:]:
            shape = tuple(self.context.get_tensor_shape(extra))
            self._buffer(extra, int(np.prod(shape)) * self.dtypes[extra].itemsize)
        before, copied_in, computed, copied_out = self.events
        self._record(before)
        _check(cudart, cudart.cudaMemcpyAsync(iptr, host_in.ctypes.data, host_in.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        self._record(copied_in)
        if not self.context.execute_async_v3(self.stream):
            raise TargetError(f"TensorRT inference failed ({_last_error(self.log_lines)}); see the TensorRT messages above")
        self._record(computed)
        _check(cudart, cudart.cudaMemcpyAsync(host_out.ctypes.data, optr, host_out.nbytes, kind.cudaMemcpyDeviceToHost, self.stream))
        self._record(copied_out)
        _check(cudart, cudart.cudaEventSynchronize(copied_out))
        self.last_times = {
            "h2d": self._elapsed(before, copied_in),
            "engine": self._elapsed(copied_in, computed),
            "d2h": self._elapsed(computed, copied_out),
        }
        # A class map (int32: TensorRT's ArgMax) as it is; logits as float32 whatever the engine's output type.
        return host_out if host_out.dtype.kind in "iu" else host_out.astype(np.float32, copy=False)

    def _record(self, event: Any) -> None:
        _check(self.cudart, self.cudart.cudaEventRecord(event, self.stream))

    def _elapsed(self, start: Any, end: Any) -> float:
        return float(_check(self.cudart, self.cudart.cudaEventElapsedTime(start, end)))

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for ptr, _ in getattr(self, "buffers", {}).values():
            cudart.cudaFree(ptr)
        for ptr, _ in getattr(self, "host", {}).values():
            cudart.cudaFreeHost(ptr)
        for event in getattr(self, "events", []):
            cudart.cudaEventDestroy(event)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
