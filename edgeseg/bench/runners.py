"""One runner per runtime: load an artifact with its own runtime, then `run(x) -> logits`.

onnxruntime and OpenVINO runners live here so bench controls threads and the execution
precision; TensorRT (jetson) and Core ML artifacts are loaded through their target module
(edgeseg.export.tensorrt builds the engine on first use and caches it). Each SDK is imported only
inside the function that needs it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.bench.artifact import Artifact
from edgeseg.bench.device import package_version
from edgeseg.errors import CheckpointError, ConfigError, TargetError, did_you_mean, missing_dependency
from edgeseg.export.base import TARGETS, Runner, get_target

log = logging.getLogger(__name__)

OPENVINO_HINTS = ("f32", "bf16", "f16")


@dataclass
class Loaded:
    """A loaded runner and how it runs: the `runtime`/`provider` columns of a result row."""

    runner: Runner
    runtime: str
    runtime_version: str | None
    provider: str
    precision_hint: str | None = None
    static_batch: int | None = None  # the batch size the model was built for, None when dynamic


class OrtRunner:
    """onnxruntime InferenceSession on the CPU execution provider."""

    def __init__(self, artifact: Artifact, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx") from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        model = artifact.path / artifact.meta["model_file"]
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"onnxruntime cannot load '{model}' ({str(exc).splitlines()[0][:200]}); re-export the artifact") from None
        self.input_name = artifact.meta["input_name"]
        self.output_name = artifact.meta["output_name"]
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.input_name not in inputs:
            raise CheckpointError(
                f"'{model}' has no input '{self.input_name}' (has {', '.join(inputs)}); meta.json does not match: re-export"
            )
        batch = inputs[self.input_name].shape[0]
        self.static_batch = batch if isinstance(batch, int) else None
        self.version = ort.__version__

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


class OpenVINORunner:
    """OpenVINO compiled model with one infer request (latency mode).

    `run` returns a view of the request's output tensor: valid until the next call, so timing
    measures inference and not a copy.
    """

    def __init__(self, artifact: Artifact, threads: int | None, hint: str | None, device: str = "CPU") -> None:
        try:
            import openvino as ov
        except ImportError:
            raise missing_dependency("openvino", "openvino") from None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        model_path = artifact.path / artifact.meta["model_file"]
        core = ov.Core()
        try:
            model = core.read_model(str(model_path))
            compiled = core.compile_model(model, device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with long text
            raise CheckpointError(
                f"OpenVINO cannot load '{model_path}' on {device} ({str(exc).splitlines()[0][:200]}); re-export the artifact"
            ) from None
        self.request = compiled.create_infer_request()
        self.hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        shape = model.inputs[0].get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        self.version = package_version("openvino") or ov.get_version()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data


class TorchRunner:
    """PyTorch eager on the CPU from a checkpoint: the baseline row (torch imported here only)."""

    def __init__(self, artifact: Artifact, threads: int | None) -> None:
        try:
            import torch
        except ImportError:
            raise missing_dependency("torch", "train") from None
        from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = model_from_checkpoint(load_checkpoint(artifact.path), artifact.output_stride)
        base: Any = getattr(self.model, "float_model", self.model)
        base.set_input_size(artifact.input_size)
        self.model.eval()
        self.static_batch = None
        self.version = torch.__version__
        self.threads = torch.get_num_threads()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()


def check_hint(hint: str | None, target: str) -> str | None:
    """The OpenVINO execution precision to use for `target`: `hint` for OpenVINO, None elsewhere.

    A misspelt hint is an error; a hint given for another runtime is ignored (with a warning), so
    one command can bench OpenVINO next to other targets. Rows record the precision actually run.
    """
    if hint is None:
        return None
    if hint not in OPENVINO_HINTS:
        raise ConfigError(
            f"--precision-hint '{hint}' is not an OpenVINO precision{did_you_mean(hint, OPENVINO_HINTS)}; use one of {', '.join(OPENVINO_HINTS)}"
        )
    if target != "openvino":
        log.warning("--precision-hint %s applies to OpenVINO only; ignored for a %s artifact", hint, target)
        return None
    return hint


def load_runner(artifact: Artifact, *, threads: int | None = None, precision_hint: str | None = None) -> Loaded:
    """Load `artifact` with its target's own runtime.

    Args:
        artifact: from open_artifact.
        threads: CPU threads of the runtime (None: its default).
        precision_hint: OpenVINO execution precision (f32, bf16, f16). Default: meta.json's
            `precision_hint`, else f32 for an FP32 artifact (OpenVINO would otherwise run it in
            bf16 on CPUs that have it), else the runtime's default, read back and recorded.
    """
    precision_hint = check_hint(precision_hint, artifact.target)
    if artifact.target == "torch":
        tr = TorchRunner(artifact, threads)
        return Loaded(tr, "torch", tr.version, "CPU (eager)", None, None)
    if artifact.target == "onnx":
        ort_runner = OrtRunner(artifact, threads)
        return Loaded(ort_runner, "onnxruntime", ort_runner.version, "CPUExecutionProvider", None, ort_runner.static_batch)
    if artifact.target == "openvino":
        hint = precision_hint or artifact.meta.get("precision_hint") or ("f32" if artifact.precision == "fp32" else None)
        ov_runner = OpenVINORunner(artifact, threads, hint)
        return Loaded(ov_runner, "openvino", ov_runner.version, "CPU", ov_runner.hint, ov_runner.static_batch)
    return _load_through_target(artifact, threads)


def _load_through_target(artifact: Artifact, threads: int | None) -> Loaded:
    """jetson (TensorRT) and coreml: the target module owns engine building and the model format."""
    name = artifact.target
    try:
        target = get_target(name)
    except ModuleNotFoundError:
        raise TargetError(f"target '{name}' is not part of this edgeseg install ({TARGETS[name]} is missing); upgrade edgeseg") from None
    ok, why = target.is_available()
    if not ok:
        raise TargetError(f"cannot bench '{artifact.path}' here: {why}")
    options: dict[str, Any] = {"threads": threads} if threads else {}
    runner = target.load(artifact.path, artifact.meta, **options)
    batch = getattr(runner, "static_batch", None)
    if name == "jetson":
        return Loaded(runner, "tensorrt", package_version("tensorrt"), _trt_provider(artifact), None, batch)
    return Loaded(runner, "coreml", package_version("coremltools"), "Core ML (all compute units)", None, batch)


def _trt_provider(artifact: Artifact) -> str:
    build = artifact.path / "build.json"
    try:
        dla = json.loads(build.read_text()).get("dla_core") if build.is_file() else None
    except (OSError, json.JSONDecodeError):
        dla = None
    return f"DLA{dla} (GPU fallback)" if dla is not None else "GPU"
