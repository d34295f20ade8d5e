"""The "onnx" target: model.onnx (FP32 or Q/DQ INT8) + meta.json, run with onnxruntime.

Device side (runner, describe) imports numpy and onnxruntime only; the export side (torch, onnx,
onnxsim) is edgeseg.export.onnx_export, imported inside `export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import CheckpointError, missing_dependency
from edgeseg.export.base import ExportRequest, Loaded, package_version
from edgeseg.export.io_spec import IOSpec, model_input

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class OnnxRunner:
    """An ONNX model in onnxruntime (CPU execution provider unless told otherwise): run(x) -> logits."""

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: list[str] | None = None,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx") from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"onnxruntime cannot load '{path}' ({str(exc).splitlines()[0][:200]}); re-export the artifact") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_name = input_name or next(iter(inputs))
        if self.input_name not in inputs:
            raise CheckpointError(
                f"'{path}' has no input '{self.input_name}' (has {', '.join(inputs)}); meta.json does not match: re-export"
            )
        self.output_name = output_name or self.session.get_outputs()[0].name
        batch = inputs[self.input_name].shape[0]
        self.static_batch = batch if isinstance(batch, int) else None
        self.version = ort.__version__

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: model_input(x)})[0]


class OnnxTarget:
    """The Target protocol for ONNX / onnxruntime (see edgeseg.export.base)."""

    name = "onnx"
    runtime = "onnxruntime"
    runtime_label = "onnxruntime"
    extra = "onnx"
    precisions = ("fp32", "int8")
    variants: tuple[tuple[str, str | None], ...] = (("fp32", None),)
    precision_hints: tuple[str, ...] = ()

    def is_available(self) -> tuple[bool, str]:
        for module in ("onnx", "onnxsim", "onnxruntime"):
            try:
                __import__(module)
            except ImportError:
                return False, str(missing_dependency(module, "onnx"))
        return True, ""

    def can_run_here(self) -> tuple[bool, str]:
        if package_version("onnxruntime") is None:
            return False, str(missing_dependency("onnxruntime", "onnx"))
        return True, ""

    def describe(self, meta: dict[str, Any], folder: Path | None) -> str:
        report = meta.get("export_report") or {}
        if "max_abs_diff" in report:
            return f"onnxruntime vs PyTorch: max |diff| {report['max_abs_diff']:.2e}"
        return ""

    def export(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        """Write out/model.onnx; returns the meta (written by the orchestrator)."""
        from edgeseg.config import recipe_from_dict
        from edgeseg.export.onnx_export import export_onnx, prepare_model
        from edgeseg.export.prepare import tool_versions

        model, ckpt, meta = prepare_model(request)
        opset = int(request.options.get("opset") or recipe_from_dict(ckpt["recipe"]).export.opset)
        meta.update(
            {
                "target": self.name,
                "precision": request.precision,
                "model_file": "model.onnx",
                "input_name": INPUT_NAME,
                "output_name": OUTPUT_NAME,
                "tool_versions": tool_versions("torch", "onnx", "onnxsim", "onnxruntime"),
            }
        )
        report = export_onnx(
            model,
            Path(out) / "model.onnx",
            input_size=tuple(meta["input_size"]),
            meta=meta,
            opset=opset,
            dynamic_batch=request.dynamic_batch,
        )  # type: ignore[arg-type]
        # `out` is the temporary folder of an atomic build: record the path inside the artifact.
        meta["export_report"] = {**report, "path": meta["model_file"]}
        return meta

    def wrap_io(self, folder: Path, meta: dict[str, Any], io: IOSpec) -> dict[str, Any]:
        """Wrap the verified core ONNX in `folder` for `io` and check it against the core in
        onnxruntime on 16 images of the artifact's data (edgeseg.export.io_wrap)."""
        from edgeseg.export.io_wrap import wrap_checked_onnx

        return {**meta, **wrap_checked_onnx(folder / meta["model_file"], io, meta, self.name)}

    def load(self, artifact: Path, meta: dict[str, Any], *, threads: int | None = None, precision_hint: str | None = None) -> Loaded:
        runner = OnnxRunner(
            Path(artifact) / meta["model_file"], threads, input_name=meta.get("input_name"), output_name=meta.get("output_name")
        )
        return Loaded(runner, self.runtime, runner.version, "CPUExecutionProvider", None, runner.static_batch)


TARGET = OnnxTarget()
