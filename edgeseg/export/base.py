"""The small interface every target implements, and the explicit table of targets.

An artifact is a folder: the model files plus `meta.json` (see ARTIFACT_META_KEYS), written
atomically (edgeseg.fsutil.atomic_dir), so bench and predict need nothing else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeseg.errors import TargetError, did_you_mean

# Target name -> module implementing the Target protocol (resolved lazily: heavy SDKs are
# imported only inside these modules).
TARGETS: dict[str, str] = {
    "onnx": "edgeseg.export.onnx",
    "openvino": "edgeseg.export.openvino",
    "jetson": "edgeseg.export.tensorrt",
    "coreml": "edgeseg.export.coreml",
}

PRECISIONS = ("fp32", "fp16", "int8")

# Keys every artifact's meta.json carries.
ARTIFACT_META_KEYS = (
    "schema_version",  # int, META_SCHEMA_VERSION
    "target",  # onnx | openvino | jetson | coreml
    "precision",  # fp32 | fp16 | int8
    "model_file",  # file (or folder) name inside the artifact folder
    "input_name",
    "output_name",
    "input_size",  # [H, W]
    "output_stride",
    "classes",  # ClassInfo.to_dict()
    "normalization",  # {"mean": [...], "std": [...]}
    "data",  # {"format", "root", "split", "synthetic": {...}} used by bench by default
    "quant",  # {"method", "calib_list", "num_images", "qat"} or None
    "source_checkpoint",
    "source_checkpoint_sha256",
    "recipe_hash",
    "tool_versions",  # {"edgeseg", "torch", "onnx", ...}
)
META_SCHEMA_VERSION = 1


@dataclass
class ExportRequest:
    """What the user asked for; one request is exported to one artifact folder per target."""

    checkpoint: Path
    precision: str = "int8"
    output_stride: int | None = None
    input_size: tuple[int, int] | None = None
    dynamic_batch: bool = False
    out_dir: Path = Path("export")
    options: dict[str, Any] = field(default_factory=dict)  # target-specific: allow_fallback, ptq, dla, ...


class Runner(Protocol):
    """A loaded artifact: `run(x)` maps a float32 NCHW array to float32 logits."""

    def run(self, x: Any) -> Any: ...


class Target(Protocol):
    name: str

    def is_available(self) -> tuple[bool, str]:
        """(True, '') or (False, why: the missing SDK with its install command, or the platform)."""

    def export(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        """Write the artifact into folder `out`; return its meta.json content."""

    def load(self, artifact: Path, meta: dict[str, Any], **options: Any) -> Runner:
        """Load an artifact for inference with this target's own runtime."""


def get_target(name: str) -> Target:
    """Resolve a target by name from TARGETS (did-you-mean on typos)."""
    if name not in TARGETS:
        raise TargetError(f"unknown target '{name}'{did_you_mean(name, TARGETS)}; use one of {', '.join(TARGETS)}")
    module = importlib.import_module(TARGETS[name])
    return module.TARGET
