"""Export orchestration: one artifact folder per target, written atomically with meta.json + README.md.

An artifact is DIR/<target>_<precision>_os<N>[_<variant>]/ holding the model files, `meta.json`
(the contract of edgeseg.export.meta) and a one-line README on how to bench it on the device.
The helpers targets share (verification images, agreement, the source ONNX) live in
edgeseg.export.common; this module only drives targets through their interface.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError, TargetError
from edgeseg.export.base import TARGETS, ExportRequest, get_target
from edgeseg.export.common import forced_gates
from edgeseg.export.io_spec import IOSpec
from edgeseg.export.io_wrap import resolve_io
from edgeseg.export.meta import model_size, validate_meta, write_meta
from edgeseg.fsutil import atomic_dir, write_text

log = logging.getLogger(__name__)


def artifact_name(target: str, precision: str, output_stride: int, variant: str | None = None) -> str:
    """Folder name of an artifact, e.g. openvino_int8_os16 (or openvino_int8_os16_nncf)."""
    return f"{target}_{precision}_os{output_stride}" + (f"_{variant}" if variant else "")


def bench_command(folder: Path) -> str:
    """The command that benches an artifact on its device."""
    return f"edgeseg bench {folder} --json results.json"


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
        write_meta(tmp, meta)
        write_text(tmp / "README.md", f"Bench on the device: `{bench_command(folder)}`\n")
        result.update(meta)

    atomic_dir(folder, _build)
    return result


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
    from edgeseg.export.mixed import check_options, requested

    if requested(request.options):  # before any work, and before they name the folder
        check_options(request.precision, request.options)
    t = get_target(target)
    io = resolve_io(t, request.options)
    ok, why = t.is_available()
    if not ok:
        raise TargetError(f"target '{target}' cannot export here: {why}")
    start = time.perf_counter()
    staged: dict[str, Any] = {}

    def build(tmp: Path) -> dict[str, Any]:
        # --force: a verification gate that fails is recorded, the artifact written and marked.
        keep: contextlib.AbstractContextManager[list[dict[str, Any]]] = (
            forced_gates() if request.options.get("force") else contextlib.nullcontext([])
        )
        with keep as failures:
            meta = t.export(request, tmp)
            # The core (tensor in, logits out) is exported and verified; then wrapped as asked.
            if not io.plain and "io" not in meta:  # (a target with io_in_export wrapped its model itself)
                meta = t.wrap_io(tmp, meta, io)  # type: ignore[attr-defined]
        meta.setdefault("io", io.as_meta())
        meta["verified"] = not failures
        if failures:
            meta["verification_failures"] = failures
        staged.update(meta)
        return meta

    # The folder name needs the output stride the exporter resolves; export into a staging
    # name first only when the request does not pin it.
    os_ = request.output_stride or _checkpoint_output_stride(request.checkpoint)
    folder = Path(request.out_dir) / artifact_name(target, request.precision, os_, _variant(request, target, io))
    meta = write_artifact(folder, build)
    return ExportResult(target, folder, meta, time.perf_counter() - start, model_size(folder, meta["model_file"]))


def _variant(request: ExportRequest, target: str, io: IOSpec | None = None) -> str | None:
    """nncf for OpenVINO's --ptq; float<K> or drop<D>[-class<C>] for layers kept float (--keep-float, --max-drop, --max-class-drop);
    <input>-<output> where --input/--output differ from the target's default (e.g. tensor-logits);
    fp32-regions for a Jetson INT8 bundle whose float layers stay FP32 (--float-regions fp32)."""
    ptq, k, d = request.options.get("ptq"), request.options.get("keep_float"), request.options.get("max_drop")
    parts = [str(ptq)] if ptq and target == "openvino" else []
    c = request.options.get("max_class_drop")
    parts += [f"float{k}"] if k is not None else [f"drop{d:g}" + (f"-class{c:g}" if c is not None else "")] if d is not None else []
    if io is not None and (io.input, io.output) != tuple(getattr(get_target(target), "io_defaults", ("tensor", "logits"))):
        parts.append(f"{io.input}-{io.output}")
    if target == "jetson" and request.precision == "int8" and request.options.get("float_regions") == "fp32":
        parts.append("fp32-regions")
    return "_".join(parts) or None


def _checkpoint_output_stride(checkpoint: Path) -> int:
    from edgeseg.train.checkpoint import load_checkpoint

    return int(load_checkpoint(checkpoint)["arch"]["output_stride"])


def check_io(request: ExportRequest, targets: Iterable[str]) -> None:
    """Refuse --input/--output values a named target cannot give, before any work ('all' is
    checked per target during the export, where a target that cannot is recorded as failed)."""
    for name in targets:
        if name != "all":
            resolve_io(get_target(name), request.options)


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
        t = get_target(name)
        ok, why = t.is_available()
        if expand and request.precision not in t.precisions:
            ok, why = False, f"{name} has no {request.precision} export (it has {', '.join(t.precisions)})"
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
    """One line on how an artifact was verified (for the CLI): the target's own words."""
    if not result.meta:
        return ""
    return get_target(result.target).describe(result.meta, result.folder)
