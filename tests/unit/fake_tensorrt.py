"""A stand-in for the `tensorrt` module (10.x or 11.x), which cannot exist without an NVIDIA GPU.

Only names of the real Python API exist on it (a subset), with the real enum values and call
signatures, so code that uses a removed or misspelt name fails here as it would on a device.
Names that are the stand-in's own start with an underscore. Sources, checked for issue 17:
- Enum members and values: the real bindings from PyPI (tensorrt-cu12-bindings 10.3.0, 10.13.0.35
  and 11.4.0.106, imported against stub libnvinfer libraries, read with int(member)). In 11.x
  NetworkDefinitionCreationFlag.EXPLICIT_BATCH is gone and STRONGLY_TYPED (deprecated, ignored:
  11.x is always strongly typed) is 0, not 10.x's 1. BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4 and
  OBEY_/PREFER_PRECISION_CONSTRAINTS are gone ("Removed Python APIs" of NVIDIA's 10.x -> 11.x
  migration guide, and absent from the 11.4 bindings); GPU_FALLBACK stays 3. The other enums below
  have the same values in all three.
- Signatures: NVIDIA/TensorRT python/src/infer/pyCore.cpp (10.x) and the 11.4.0.106 docstrings:
  Builder.create_network(flags=0), IExecutionContext.execute_async_v3(stream_handle) -> bool,
  set_tensor_address(name, memory) -> bool, set_input_shape(name, shape) -> bool,
  Runtime.deserialize_cuda_engine(serialized_engine) -> engine or None, Runtime.DLA_core (default
  -1, valid in [0, num_DLA_cores), setting it does nothing where there is no DLA); nptype as in
  python/packaging/bindings_wheel/tensorrt/__init__.py.

The plan a stand-in builder serializes is a header plus the ONNX it parsed. The stand-in runtime
runs that ONNX with onnxruntime on the bytes in the stand-in device memory (fake_cudart), queued on
the stream: a runner gets the reference's logits only when its bindings, shapes, copies and
stream order are all right.
"""

from __future__ import annotations

import enum
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
from fake_cudart import FakeCudart, cudaError_t

Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})
DataType = enum.IntEnum(
    "DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7, "INT64": 8, "INT4": 9}
)
TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "TACTIC_DRAM": 4})
NETWORK_FLAGS = {10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, 11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1}}
BUILDER_FLAGS = {
    10: {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "TF32": 6, "OBEY_PRECISION_CONSTRAINTS": 9, "BF16": 17},
    11: {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "TF32": 6},
}
NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32}
NUMPY |= {DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}  # fp8, bf16, int4: none
ORT_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64}
MAGIC = b"fake-tensorrt-plan\n"


def install(monkeypatch: Any, trt: FakeTensorRT | None, cudart: FakeCudart | None = None) -> None:
    """Make `import tensorrt` and `from cuda.bindings import runtime` find the stand-ins (None: not installed)."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if cudart is not None:
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.__path__, bindings.__path__ = [], []  # packages, as the real ones
        cuda.bindings, bindings.runtime = bindings, cudart  # type: ignore[attr-defined]
        for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
            monkeypatch.setitem(sys.modules, name, module)


class FakeTensorRT(types.ModuleType):
    """`tensorrt` of one version: the builder side records its calls in `calls`, plans in `plans`.

    Args:
        version: "10.x.y" or "11.x.y" (11.x lacks what 11.x removed).
        dla_cores: DLA cores of builders and runtimes.
        parse_ok / build_ok / execute_ok: False makes that step fail as TensorRT does: an ERROR
            message to the logger, and False or None back.
        cudart: the device (fake_cudart.FakeCudart) whose memory engines read and write.
        outputs_first: list an engine's outputs before its inputs (TensorRT promises no order).
    """

    def __init__(
        self,
        version: str,
        dla_cores: int = 2,
        *,
        parse_ok: bool = True,
        build_ok: bool = True,
        execute_ok: bool = True,
        cudart: FakeCudart | None = None,
        outputs_first: bool = False,
    ) -> None:
        super().__init__("tensorrt")
        self.__version__, self._major = version, int(version.split(".")[0])
        self.calls: list[tuple] = []
        self.plans: list[bytes] = []
        self._dla_cores, self._parse_ok, self._build_ok, self._execute_ok = dla_cores, parse_ok, build_ok, execute_ok
        self._cudart, self._outputs_first = cudart, outputs_first
        api = 11 if self._major >= 11 else 10
        self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", NETWORK_FLAGS[api])
        self.BuilderFlag = enum.IntEnum("BuilderFlag", BUILDER_FLAGS[api])
        self.DataType, self.TensorIOMode, self.DeviceType, self.MemoryPoolType = DataType, TensorIOMode, DeviceType, MemoryPoolType
        self.ILogger, self.Logger = _logger_classes()
        for name, base in (("Builder", _Builder), ("OnnxParser", _OnnxParser), ("Runtime", _Runtime)):
            setattr(self, name, type(name, (base,), {"_trt": self}))

    @staticmethod
    def nptype(trt_type: Any) -> Any:
        if trt_type in NUMPY:
            return NUMPY[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


def _logger_classes() -> tuple[type, type]:
    class ILogger:
        def __init__(self) -> None: ...

        def log(self, severity: Any, msg: str) -> None:
            raise RuntimeError("ILogger.log is abstract")

    class Logger(ILogger):
        def __init__(self, min_severity: Any = Severity.WARNING) -> None:
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            if severity <= self.min_severity:
                print(f"[TRT] [{severity.name[0]}] {msg}")

    for cls in (ILogger, Logger):  # Severity and its members are exported into both, as trt.Logger.WARNING
        cls.Severity = Severity  # type: ignore[attr-defined]
        for member in Severity:
            setattr(cls, member.name, member)
    return ILogger, Logger


# --- builder side -------------------------------------------------------------------------------


class _Network:
    def __init__(self) -> None:
        self._onnx = b""  # what the parser read


class _Profile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - the real argument names
        if not all(a <= b <= c for a, b, c in zip(min, opt, max, strict=True)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = (list(min), list(opt), list(max))


class _TimingCache:
    def __init__(self, blob: bytes) -> None:
        self._blob = blob

    def serialize(self) -> memoryview:
        return memoryview(self._blob)


class _Config:
    """IBuilderConfig: only its real properties can be set (a pybind object has no __dict__)."""

    def __init__(self, trt: FakeTensorRT) -> None:
        object.__setattr__(self, "_trt", trt)
        object.__setattr__(self, "_props", {"default_device_type": DeviceType.GPU, "DLA_core": -1})
        object.__setattr__(self, "_profiles", [])
        object.__setattr__(self, "_cache", None)

    def __getattr__(self, name: str) -> Any:
        if name in self._props:
            return self._props[name]
        raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._props:
            raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")
        if name == "default_device_type" and not isinstance(value, DeviceType):
            raise TypeError(f"default_device_type takes a tensorrt.DeviceType, not {value!r}")
        self._props[name] = int(value) if name == "DLA_core" else value
        self._trt.calls.append(("set", name, value))

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        if not isinstance(pool, MemoryPoolType):
            raise TypeError(f"set_memory_pool_limit(): incompatible function arguments ({pool!r})")
        self._trt.calls.append(("pool", pool, pool_size))

    def set_flag(self, flag: Any) -> None:
        if not isinstance(flag, self._trt.BuilderFlag):
            raise TypeError(f"set_flag(): incompatible function arguments ({flag!r})")
        self._trt.calls.append(("flag", flag.name))

    def add_optimization_profile(self, profile: _Profile) -> int:
        self._profiles.append(profile)
        self._trt.calls.append(("profile", [(n, *s) for n, s in profile._shapes.items()]))
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> _TimingCache:
        self._trt.calls.append(("cache_in", bytes(serialized_timing_cache)))
        return _TimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        object.__setattr__(self, "_cache", cache)
        self._trt.calls.append(("set_cache", ignore_mismatch))
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self._cache


class _Builder:
    _trt: FakeTensorRT

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        logger.log(Severity.INFO, f"[MemUsageChange] Init builder kernel library (TensorRT {self._trt.__version__})")

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - the real name
        return self._trt._dla_cores

    def create_network(self, flags: int = 0) -> _Network:
        self._trt.calls.append(("network", flags))
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config(self._trt)

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> memoryview | None:
        if not self._trt._build_ok or not network._onnx:
            self._logger.log(
                Severity.ERROR,
                "IBuilder::buildSerializedNetwork: Error Code 10: Internal Error (Could not find any implementation for node /conv1/Conv.)",
            )
            return None
        dla = config.DLA_core if config.default_device_type == DeviceType.DLA else None
        profiles = {n: [s[0], s[2]] for p in config._profiles for n, s in p._shapes.items()}
        header = {"trt_major": self._trt._major, "dla_core": dla, "profiles": profiles}
        plan = MAGIC + json.dumps(header).encode() + b"\n" + network._onnx
        if config._cache is not None:  # the build's timings join the cache it was given
            config._cache._blob += f"[timings of a {len(network._onnx)}-byte network]".encode()
        self._trt.plans.append(plan)
        return memoryview(plan)


class _OnnxParser:
    _trt: FakeTensorRT

    def __init__(self, network: _Network, logger: Any) -> None:
        self._network, self._logger, self._errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        self._trt.calls.append(("parse", Path(model).name))
        if not self._trt._parse_ok:
            self._errors.append("In node 12 (importFallbackPluginImporter): UNSUPPORTED_NODE: Unsupported ONNX op: Foo")
            self._logger.log(Severity.ERROR, self._errors[-1])
            return False
        self._network._onnx = Path(model).read_bytes()
        return True


# --- runtime side -------------------------------------------------------------------------------


class _Runtime:
    _trt: FakeTensorRT

    def __init__(self, logger: Any) -> None:
        self._logger, self._dla = logger, -1

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - the real names
        return self._trt._dla_cores

    @property
    def DLA_core(self) -> int:  # noqa: N802
        return self._dla

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:  # noqa: N802
        if self.num_DLA_cores == 0:
            return
        if not 0 <= int(value) < self.num_DLA_cores:
            self._logger.log(Severity.ERROR, f"IRuntime::setDLACore: Error Code 3: API Usage Error (DLA core {value} out of range)")
            return
        self._dla = int(value)

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> _Engine | None:
        self._trt.calls.append(("deserialize", self._dla))
        blob = bytes(serialized_engine)
        if not blob.startswith(MAGIC) or b"\n" not in blob[len(MAGIC) :]:
            self._logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Magic tag does not match)")
            return None
        header_line, onnx = blob[len(MAGIC) :].split(b"\n", 1)
        header = json.loads(header_line)
        if header["trt_major"] != self._trt._major:
            msg = f"Version tag does not match. Note: Current Version: {self._trt._major}, Serialized Engine Version: {header['trt_major']}"
            self._logger.log(Severity.ERROR, f"IRuntime::deserializeCudaEngine: Error Code 1: Serialization ({msg})")
            return None
        return _Engine(self._trt, self._logger, onnx, header["profiles"])


class _Engine:
    """ICudaEngine: I/O tensors, dtypes and shapes (-1 where dynamic) from the plan's ONNX."""

    def __init__(self, trt: FakeTensorRT, logger: Any, onnx: bytes, profiles: dict[str, list]) -> None:
        import onnxruntime as ort

        self._trt, self._logger, self._profiles = trt, logger, profiles
        self._session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        ins = [(t, TensorIOMode.INPUT) for t in self._session.get_inputs()]
        outs = [(t, TensorIOMode.OUTPUT) for t in self._session.get_outputs()]
        io = outs + ins if trt._outputs_first else ins + outs
        self._names = [t.name for t, _ in io]
        self._modes = {t.name: mode for t, mode in io}
        self._dims = {t.name: list(t.shape) for t, _ in io}  # ints, or the names of dynamic dims
        self._dtypes = {t.name: ORT_TYPES[t.type] for t, _ in io}
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> Any:
        return self._modes.get(name, TensorIOMode.NONE)

    def get_tensor_dtype(self, name: str) -> Any:
        return self._dtypes[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self._dims[name])

    def create_execution_context(self, strategy: Any = None) -> _Context:
        return _Context(self)


class _Context:
    """IExecutionContext: execute_async_v3 checks what TensorRT checks, then queues the run on the stream."""

    def __init__(self, engine: _Engine) -> None:
        self._engine, self._shapes, self._addresses = engine, {}, {}
        self._error = lambda msg: engine._logger.log(Severity.ERROR, msg) or False

    def set_input_shape(self, name: str, shape: Any) -> bool:
        e, shape = self._engine, tuple(int(d) for d in shape)
        lo, hi = e._profiles.get(name, [e.get_tensor_shape(name)] * 2)
        if e.get_tensor_mode(name) != TensorIOMode.INPUT or len(shape) != len(lo):
            return self._error(f"IExecutionContext::setInputShape: Error Code 3: API Usage Error ({name}: {shape})")
        if not all(lo_d <= d <= hi_d for d, lo_d, hi_d in zip(shape, lo, hi, strict=True)):
            return self._error(f"IExecutionContext::setInputShape: Error Code 3: API Usage Error ({name} {shape} is outside {lo}..{hi})")
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        e = self._engine
        if e.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, e.get_tensor_shape(name))
        inputs = [n for n in e._names if e.get_tensor_mode(n) == TensorIOMode.INPUT]
        if any(n not in self._shapes for n in inputs):
            return e.get_tensor_shape(name)  # -1 where it depends on an input shape not yet set
        key = tuple(self._shapes[n] for n in inputs)
        if key not in e._output_shapes:  # TensorRT infers them from the network; here one run on zeros does
            zeros = {n: np.zeros(self._shapes[n], NUMPY[e._dtypes[n]]) for n in inputs}
            outs = zip(e._session.get_outputs(), e._session.run(None, zeros), strict=True)
            e._output_shapes[key] = {o.name: tuple(v.shape) for o, v in outs}
        return e._output_shapes[key][name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self._engine.get_tensor_mode(name) == TensorIOMode.NONE:
            return self._error(f"IExecutionContext::setTensorAddress: Error Code 3: API Usage Error (no tensor {name})")
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        e, cudart = self._engine, self._engine._trt._cudart
        if not e._trt._execute_ok:
            return self._error("IExecutionContext::enqueueV3: Error Code 1: Cask (Cask convolution execution failed)")
        unset = [n for n in e._names if n not in self._addresses or min(self.get_tensor_shape(n)) < 1]
        if unset or cudart is None:
            return self._error(f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (shape or address of {unset} not set)")
        if not cudart._enqueue(int(stream_handle), self._compute):  # pybind takes the handle as an int
            return self._error("IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (invalid resource handle)")
        return True

    def _compute(self) -> Any:
        """The queued run: inputs from device memory, onnxruntime, outputs to device memory."""
        e, cudart, feeds = self._engine, self._engine._trt._cudart, {}
        assert cudart is not None
        for name in (n for n in e._names if e.get_tensor_mode(n) == TensorIOMode.INPUT):
            dtype, shape = np.dtype(NUMPY[e._dtypes[name]]), self._shapes[name]
            region = cudart._device(self._addresses[name], int(np.prod(shape)) * dtype.itemsize)
            if region is None:
                return cudaError_t.cudaErrorIllegalAddress
            feeds[name] = np.frombuffer(region, dtype).reshape(shape).copy()
        results = e._session.run(None, feeds)
        for out, value in zip(e._session.get_outputs(), results, strict=True):
            region = cudart._device(self._addresses[out.name], value.nbytes)
            if region is None or tuple(value.shape) != self.get_tensor_shape(out.name):
                return cudaError_t.cudaErrorIllegalAddress
            region[:] = np.ascontiguousarray(value).tobytes()
        return None
