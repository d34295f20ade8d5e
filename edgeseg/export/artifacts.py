"""Artifact folders: written atomically with meta.json + README.md, read back with validation.

An artifact is DIR/<target>_<precision>_os<N>[_<variant>]/ holding the model files, `meta.json`
(every ARTIFACT_META_KEYS entry) and a one-line README on how to bench it on the device. This
module is shared by every target and by bench; it needs numpy and Pillow only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import CheckpointError, DataError, EdgesegError, TargetError
from edgeseg.export.base import ARTIFACT_META_KEYS, META_SCHEMA_VERSION, PRECISIONS, TARGETS, ExportRequest, get_target
from edgeseg.fsutil import atomic_dir, write_json, write_text

log = logging.getLogger(__name__)

META_FILE = "meta.json"
# Precisions a target exports when it does not have all of PRECISIONS ('all' skips the others).
TARGET_PRECISIONS = {"onnx": ("fp32", "int8")}


def artifact_name(target: str, precision: str, output_stride: int, variant: str | None = None) -> str:
    """Folder name of an artifact, e.g. openvino_int8_os16 (or openvino_int8_os16_nncf)."""
    return f"{target}_{precision}_os{output_stride}" + (f"_{variant}" if variant else "")


def bench_command(folder: Path) -> str:
    """The command that benches an artifact on its device."""
    return f"edgeseg bench {folder} --json results.json"


def validate_meta(meta: dict[str, Any], where: str) -> None:
    """Raise CheckpointError when meta lacks a key or has a value bench cannot use."""
    missing = [k for k in ARTIFACT_META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}; re-export the artifact with this edgeseg")
    if meta["schema_version"] != META_SCHEMA_VERSION:
        raise CheckpointError(
            f"{where} has schema_version {meta['schema_version']}, this edgeseg reads {META_SCHEMA_VERSION}; "
            "re-export the artifact with this edgeseg (or install the edgeseg that wrote it)"
        )
    if meta["precision"] not in PRECISIONS or meta["target"] not in TARGETS:
        raise CheckpointError(
            f"{where} names target '{meta['target']}' / precision '{meta['precision']}', which this edgeseg does not know; re-export it"
        )
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise CheckpointError(f"{where} has input_size {size!r}; it must be [height, width]: re-export the artifact")


def write_artifact(folder: str | Path, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Build an artifact folder atomically: `build(tmp)` writes the model files and returns meta.

    meta.json and README.md are added here after meta is validated, so a reader sees the old
    folder or the complete new one, never a half-written artifact.
    """
    folder = Path(folder)
    result: dict[str, Any] = {}

    def _build(tmp: Path) -> None:
        meta = build(tmp)
        validate_meta(meta, f"meta of '{folder}'")
        if not (tmp / meta["model_file"]).exists():
            raise TargetError(
                f"the {meta['target']} exporter did not write '{meta['model_file']}' into '{folder}'; this is a bug, run with --verbose"
            )
        write_json(tmp / META_FILE, meta)
        write_text(tmp / "README.md", f"Bench on the device: `{bench_command(folder)}`\n")
        result.update(meta)

    atomic_dir(folder, _build)
    return result


def read_meta(artifact: str | Path, *, target: str | None = None, input_size: Iterable[int] | None = None) -> dict[str, Any]:
    """Read and validate the meta.json of an artifact folder.

    Args:
        artifact: the artifact folder.
        target: when given, the target the caller can load (another target is a TargetError).
        input_size: when given, the [H, W] the caller will feed (another size is a TargetError).

    Raises:
        CheckpointError: no folder, no or unreadable meta.json, another schema, missing keys or
            missing model file.
        TargetError: the artifact is for another target or input size.
    """
    artifact = Path(artifact)
    if not artifact.is_dir():
        raise CheckpointError(f"artifact folder '{artifact}' does not exist; pass a folder written by 'edgeseg export'")
    path = artifact / META_FILE
    if not path.is_file():
        raise CheckpointError(f"'{artifact}' has no {META_FILE}, so it is not an edgeseg artifact; export it with 'edgeseg export'")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON ({type(exc).__name__}); re-export the artifact") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}' is not a JSON object; re-export the artifact")
    validate_meta(meta, f"'{path}'")
    if target is not None and meta["target"] != target:
        raise TargetError(f"'{artifact}' is a {meta['target']} artifact, not {target}; load it with the {meta['target']} runtime")
    if input_size is not None and list(input_size) != list(meta["input_size"]):
        want = "x".join(str(s) for s in input_size)
        have = "x".join(str(s) for s in meta["input_size"])
        raise TargetError(f"'{artifact}' was exported for input {have}, not {want}; feed {have} or re-export with --input-size {want}")
    if not (artifact / meta["model_file"]).exists():
        raise CheckpointError(f"'{artifact}' lacks its model file '{meta['model_file']}'; the folder was altered, re-export it")
    return meta


def artifact_size(folder: str | Path, model_file: str) -> int:
    """Bytes of an artifact's model: the model file and its companions (model.xml + model.bin),
    or every file of a folder model (.mlpackage). Build products (engine, cache, log) and the
    alternative FP16 ONNX of a Jetson bundle are not counted."""
    path = Path(folder) / model_file
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    stem = model_file.split(".")[0]
    derived = (".engine", ".cache", ".log", ".tmp")
    return sum(
        p.stat().st_size
        for p in Path(folder).iterdir()
        if p.is_file() and (p.name == model_file or p.name.startswith(f"{stem}.")) and not p.name.endswith(derived)
    )


def verification_images(meta: dict[str, Any], count: int, split: str | None = None) -> tuple[list[np.ndarray], str]:
    """Up to `count` preprocessed images (float32 1x3xHxW) from the artifact's data set.

    Returns (images, description). Uses the data set meta names (CamVid val, synthetic scenes,
    ...); when its root is absent here, falls back to the built-in synthetic scenes and says so
    in the description, which exporters record in meta.json.
    """
    from edgeseg.data import open_source
    from edgeseg.data.preprocess import preprocess

    d = meta["data"]
    split = split or d.get("split") or "val"
    try:
        source = open_source(d["format"], d.get("root"), split, d.get("synthetic"))
        desc = f"{d['format']} {split}"
    except DataError as exc:
        log.warning("verification data unavailable (%s); using synthetic scenes", exc)
        source = open_source("synthetic", None, "val", {"num_val": count, "size": meta["input_size"]})
        desc = f"synthetic val (fallback: {d['format']} data not found)"
    norm = meta["normalization"]
    size = tuple(meta["input_size"])
    n = min(count, len(source))
    # Spread the picks over the split rather than taking its first (often similar) frames.
    picks = np.unique(np.linspace(0, len(source) - 1, n).round().astype(int))
    images = [preprocess(source.load(int(i))[0], size, norm["mean"], norm["std"]) for i in picks]
    return images, f"{desc}, {len(images)} images"


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels whose argmax class matches between two logits arrays (N, C, H, W)."""
    if a.shape != b.shape:
        raise TargetError(f"output shapes differ: {a.shape} vs {b.shape}; the artifact does not match its source")
    return float((a.argmax(1) == b.argmax(1)).mean())


def float_model_of(model: Any) -> Any:
    """The float model of a quantized (fake-quant) model: a copy with quantization switched off.

    A quantized model has BatchNorm folded into its convolutions, so its float copy computes
    the same function as the FP32 checkpoint it came from (QAT: the fine-tuned weights).
    """
    from edgeseg.quant import is_quantized, set_quant_enabled

    if not is_quantized(model):
        return model
    import copy

    clean = copy.deepcopy(model)
    set_quant_enabled(clean, False)
    return clean


def source_onnx(
    model: Any, path: Path, *, meta: dict[str, Any], int8: bool, dynamic_batch: bool = False, opset: int = 17
) -> dict[str, Any]:
    """Write the ONNX every target starts from: Q/DQ for int8, float otherwise (simplified, checked).

    Raises:
        CheckpointError: int8 asked from a model without quantizers.
    """
    from edgeseg.export.onnx import export_onnx
    from edgeseg.quant import is_quantized

    if int8 and not is_quantized(model):
        raise CheckpointError(
            f"checkpoint '{meta.get('source_checkpoint')}' has no INT8 ranges; calibrate it ('edgeseg calibrate') or train with QAT"
        )
    source = model if int8 else float_model_of(model)
    return export_onnx(source, path, input_size=tuple(meta["input_size"]), meta=meta, opset=opset, dynamic_batch=dynamic_batch, check=True)


@dataclass
class ExportResult:
    """One exported artifact (or one skipped target, with `skipped` set to the reason)."""

    target: str
    folder: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    size_bytes: int = 0
    skipped: str = ""  # the target's SDK is not installed here: why, with the install command
    error: str = ""  # the target failed (only with 'all'; a single target raises)


def export_artifact(request: ExportRequest, target: str) -> ExportResult:
    """Export `request` for one target into out_dir/<target>_<precision>_os<N>[_variant]/."""
    t = get_target(target)
    ok, why = t.is_available()
    if not ok:
        raise TargetError(f"target '{target}' cannot export here: {why}")
    start = time.perf_counter()
    staged: dict[str, Any] = {}

    def build(tmp: Path) -> dict[str, Any]:
        meta = t.export(request, tmp)
        staged.update(meta)
        return meta

    # The folder name needs the output stride the exporter resolves; export into a staging
    # name first only when the request does not pin it.
    os_ = request.output_stride or _checkpoint_output_stride(request.checkpoint)
    folder = Path(request.out_dir) / artifact_name(target, request.precision, os_, _variant(request, target))
    meta = write_artifact(folder, build)
    return ExportResult(target, folder, meta, time.perf_counter() - start, artifact_size(folder, meta["model_file"]))


def _variant(request: ExportRequest, target: str) -> str | None:
    ptq = request.options.get("ptq")
    return str(ptq) if (ptq and target == "openvino") else None


def _checkpoint_output_stride(checkpoint: Path) -> int:
    from edgeseg.train.checkpoint import load_checkpoint

    return int(load_checkpoint(checkpoint)["arch"]["output_stride"])


def export_targets(request: ExportRequest, targets: Iterable[str]) -> list[ExportResult]:
    """Export several targets ('all' expands to every target); unavailable SDKs are skipped.

    A target named explicitly that cannot export raises. With 'all', a target whose SDK is
    missing is skipped with the reason (the install command), and one that fails is recorded
    with its error while the others are still exported.
    """
    names = list(targets)
    expand = "all" in names
    if expand:
        names = list(TARGETS)
    results = []
    for name in names:
        ok, why = get_target(name).is_available()
        if expand and request.precision not in TARGET_PRECISIONS.get(name, PRECISIONS):
            ok, why = False, f"{name} has no {request.precision} export (it has {', '.join(TARGET_PRECISIONS[name])})"
        if not ok and expand:
            results.append(ExportResult(name, skipped=why))
            continue
        # --ptq is OpenVINO's; with 'all' the other targets export the checkpoint's own INT8.
        own = (
            request
            if not (expand and name != "openvino")
            else replace(request, options={k: v for k, v in request.options.items() if k != "ptq"})
        )
        try:
            results.append(export_artifact(own, name))
        except EdgesegError as exc:
            if not expand:
                raise
            results.append(ExportResult(name, error=str(exc)))
    return results


def describe(result: ExportResult) -> str:
    """One line on how an artifact was verified (for the CLI)."""
    meta, v = result.meta, result.meta.get("verification") or {}
    if meta.get("target") == "openvino":
        layers = f", {v['weighted_layers_int8']}/{v['weighted_layers']} conv/matmul layers run INT8" if meta["precision"] == "int8" else ""
        deployed = v.get("deployed_hint_agreement")
        also = f"; at its {meta.get('precision_hint')} hint {deployed:.4%}" if deployed is not None else ""
        if v.get("exact_grid_agreement") is not None:
            also += f"; its signed-grid twin {v['exact_grid_agreement']:.4%}"
        return f"OpenVINO (f32) vs {v.get('reference')}: argmax agreement {v.get('argmax_agreement', 0):.4%}{also}{layers}"
    if meta.get("target") == "jetson":
        folder = result.folder or Path(".")
        head = (
            [ln for ln in (folder / "preflight.txt").read_text().splitlines() if ln.startswith("#")]
            if (folder / "preflight.txt").is_file()
            else []
        )
        return "preflight " + "; ".join(h.lstrip("# ") for h in head) + f" (see {folder / 'preflight.txt'})"
    if meta.get("target") == "coreml":
        c = meta.get("coreml", {})
        return f"Core ML spec checked: {c.get('convs_int8_weights')}/{c.get('convs')} convs with int8 weights; prediction needs macOS"
    return ""
