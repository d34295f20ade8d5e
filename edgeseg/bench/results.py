"""Typed bench result rows and the results file: {"schema_version": 1, "rows": [...]}.

Rows from several devices and days merge into one file (or one report); a row's id is a hash of
its content, so merging the same measurement twice keeps it once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.constants import OUTPUT_STRIDES
from edgeseg.errors import EdgesegError
from edgeseg.fsutil import write_json

SCHEMA_VERSION = 1


class ResultsError(EdgesegError):
    """A results file cannot be read or is of another schema."""


@dataclass
class BenchRow:
    """One measurement of one artifact with one runtime on one device.

    Latencies are milliseconds of the model call alone (batch `batch`); `latency_samples_ms` are
    the raw timed runs, so the report can draw their distribution. mIoU, pixel accuracy and IoU
    are percentages (None with --no-accuracy); per-class IoU is None for a class absent from
    both truth and prediction.
    """

    runtime: str  # onnxruntime | openvino | tensorrt | coreml | torch
    runtime_version: str | None
    target: str  # onnx | openvino | jetson | coreml | torch
    precision: str  # fp32 | fp16 | int8 | fakequant (a QAT checkpoint in torch eager)
    device: dict[str, Any]  # edgeseg.bench.device.device_record()
    provider: str  # where the runtime ran it: CPUExecutionProvider, CPU, GPU, DLA0, ...
    precision_hint: str | None  # the runtime's execution precision where it has one (OpenVINO)
    threads: int | None  # None: the runtime's default
    batch: int
    output_stride: int | None
    input_shape: list[int]  # N, C, H, W
    runs: int
    warmup: int
    latency: dict[str, float]  # p50, p90, p99, mean, std, min, max (ms)
    latency_samples_ms: list[float]
    throughput: float  # images/s over the timed runs (batch included); at full load where infer_requests is set
    first_inference_s: float  # load + compile + first run
    peak_mem_mb: float | None  # MiB: resident-memory peak of load + runs, above the RSS before load
    preprocess_ms: float | None  # per image: decoded image -> the model's input (resize, and normalise unless io takes the image)
    postprocess_ms: float | None  # per image: the model's output -> mask (resize + argmax of logits; resize of a class map)
    miou: float | None
    pixel_acc: float | None
    per_class_iou: dict[str, float | None] | None
    num_images: int
    data: dict[str, Any] | None  # format, split, root of the accuracy pass
    model_size_mb: float
    artifact: str
    artifact_sha256: str
    quant_method: str | None
    timestamp: str  # ISO 8601, UTC
    edgeseg_version: str
    notes: str = ""
    # Added after the first rows were written (older files lack them; None there):
    load_s: float | None = None  # loading the artifact: parse, compile, engine build where it happens
    peak_rss_mb: float | None = None  # MiB: the process's absolute resident-memory peak over load + runs
    round_p50_ms: list[float] | None = None  # p50 of each round when rows were benched interleaved
    perf_hint: str | None = None  # the runtime's performance hint where it has one (OpenVINO: latency | throughput)
    infer_requests: int | None = None  # requests in flight when throughput was measured at full load (read back from the runtime)
    engine_latency: dict[str, float] | None = None  # p50, p90, ... (ms) of the engine alone on the device (TensorRT: CUDA events)
    copy_ms: dict[str, float] | None = None  # p50 (ms) of the host-to-device ("h2d") and device-to-host ("d2h") copies
    float_convs: int | None = None  # INT8 artifacts with layers kept float (export --keep-float/--max-drop): the float convs
    verified: bool | None = None  # False: the artifact failed its export verification and was kept by --force
    io: str | None = None  # what the artifact takes and gives when not tensor->logits: image->labels, tensor->labels, image->logits
    row_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.row_id:
            self.row_id = self.compute_id()

    def compute_id(self) -> str:
        """sha256 (16 hex) of every field but row_id: equal measurements have equal ids."""
        content = {k: v for k, v in dataclasses.asdict(self).items() if k != "row_id"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "row") -> BenchRow:
        """Build a row, naming the first missing or unknown field in the error."""
        if not isinstance(d, dict):
            raise ResultsError(f"{where} is not an object; the results file is damaged: re-run 'edgeseg bench'")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - d.keys())
        if missing:
            raise ResultsError(f"{where} has no field '{missing[0]}'; the file is damaged or not from edgeseg bench: re-run bench")
        unknown = sorted(d.keys() - names)
        if unknown:
            raise ResultsError(f"{where} has unknown field {unknown[0][:40]!r}; it was written by another edgeseg: upgrade edgeseg")
        _check_row(d, where)
        return cls(**d)

    @property
    def label(self) -> str:
        """'INT8 OpenVINO' style name of the row's precision and runtime."""
        return f"{self.precision.upper()} {runtime_label(self.runtime)}"


_NON_NEGATIVE = ("throughput", "first_inference_s", "model_size_mb")
_OPTIONAL_NON_NEGATIVE = ("peak_mem_mb", "preprocess_ms", "postprocess_ms", "load_s", "peak_rss_mb")
_PERCENT = ("miou", "pixel_acc")
_COUNTS = {"batch": 1, "runs": 0, "warmup": 0, "num_images": 0}
_STRINGS = ("runtime", "target", "precision", "provider", "artifact", "artifact_sha256", "timestamp", "edgeseg_version")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_row(d: dict[str, Any], where: str) -> None:
    """Types and ranges of a row's fields: a NaN, negative or mistyped value is one error naming it."""

    def bad(key: str, why: str) -> ResultsError:
        return ResultsError(f"{where}: field '{key}' = {d.get(key)!r:.60} {why}; the file is damaged: re-run 'edgeseg bench'")

    for key in _STRINGS:
        if not isinstance(d[key], str):
            raise bad(key, "must be a string")
    for key in _NON_NEGATIVE:
        if not _number(d[key]) or d[key] < 0:
            raise bad(key, "must be a finite number >= 0")
    for key in _OPTIONAL_NON_NEGATIVE:
        if d.get(key) is not None and (not _number(d[key]) or d[key] < 0):
            raise bad(key, "must be null or a finite number >= 0")
    for key in _PERCENT:
        if d[key] is not None and (not _number(d[key]) or not 0 <= d[key] <= 100):
            raise bad(key, "must be null or a percentage in [0, 100]")
    for key, low in _COUNTS.items():
        if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < low:
            raise bad(key, f"must be a whole number >= {low}")
    if not isinstance(d["latency"], dict) or "p50" not in d["latency"] or not all(_number(v) and v >= 0 for v in d["latency"].values()):
        raise bad("latency", "must map p50, p90, ... to finite milliseconds >= 0")
    _check_device_side(d, bad)
    rounds = d.get("round_p50_ms")
    if rounds is not None and (not isinstance(rounds, list) or not rounds or not all(_number(v) and v >= 0 for v in rounds)):
        raise bad("round_p50_ms", "must be null or a non-empty list of finite milliseconds >= 0")
    if not isinstance(d["latency_samples_ms"], list) or not all(_number(v) and v >= 0 for v in d["latency_samples_ms"]):
        raise bad("latency_samples_ms", "must be a list of finite milliseconds >= 0")
    iou = d["per_class_iou"]
    if iou is not None and (not isinstance(iou, dict) or not all(v is None or (_number(v) and 0 <= v <= 100) for v in iou.values())):
        raise bad("per_class_iou", "must map class names to null or percentages in [0, 100]")
    if d["output_stride"] is not None and d["output_stride"] not in OUTPUT_STRIDES:
        raise bad("output_stride", f"must be null or one of {', '.join(map(str, OUTPUT_STRIDES))}")
    shape = d["input_shape"]
    if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise bad("input_shape", "must be [N, C, H, W] of positive whole numbers")
    if not isinstance(d["device"], dict):
        raise bad("device", "must be an object")


def _check_device_side(d: dict[str, Any], bad: Any) -> None:
    """The optional fields of full-load throughput and device-side timing."""
    for key in ("perf_hint", "io"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise bad(key, "must be null or a string")
    if d.get("float_convs") is not None and (
        not isinstance(d["float_convs"], int) or isinstance(d["float_convs"], bool) or d["float_convs"] < 0
    ):
        raise bad("float_convs", "must be null or a whole number >= 0")
    if d.get("verified") is not None and not isinstance(d["verified"], bool):
        raise bad("verified", "must be null or true/false")
    requests = d.get("infer_requests")
    if requests is not None and (not isinstance(requests, int) or isinstance(requests, bool) or requests < 1):
        raise bad("infer_requests", "must be null or a whole number >= 1")
    for key in ("engine_latency", "copy_ms"):
        value = d.get(key)
        if value is not None and (not isinstance(value, dict) or not value or not all(_number(v) and v >= 0 for v in value.values())):
            raise bad(key, "must be null or map names to finite milliseconds >= 0")


def runtime_label(runtime: str) -> str:
    """How reports name a runtime: the label its target gives (the raw name when unknown)."""
    from edgeseg.export.base import runtime_labels

    return runtime_labels().get(runtime, runtime)


def load_results(path: str | Path) -> list[BenchRow]:
    """Read a results file written by `edgeseg bench` (schema SCHEMA_VERSION only)."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file '{path}' does not exist; pass a JSON written by 'edgeseg bench --json'")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ResultsError(f"results file '{path}' is not valid JSON{line}; pass a file written by 'edgeseg bench --json'") from None
    if not isinstance(doc, dict) or "schema_version" not in doc or not isinstance(doc.get("rows"), list):
        raise ResultsError(
            f"'{path}' is not an edgeseg results file (no schema_version/rows); pass a file written by 'edgeseg bench --json'"
        )
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(
            f"results file '{path}' has schema_version {doc['schema_version']!r} but this edgeseg reads {SCHEMA_VERSION}; "
            "re-run 'edgeseg bench' with this version or use the edgeseg that wrote it"
        )
    return [BenchRow.from_dict(r, f"row {i} of '{path}'") for i, r in enumerate(doc["rows"])]


def merge_rows(*groups: list[BenchRow]) -> list[BenchRow]:
    """Concatenate rows in order, keeping the first of rows with the same id."""
    seen: set[str] = set()
    out = []
    for rows in groups:
        for row in rows:
            if row.row_id not in seen:
                seen.add(row.row_id)
                out.append(row)
    return out


def save_results(path: str | Path, rows: list[BenchRow]) -> list[BenchRow]:
    """Append `rows` to the results file at `path` (created if absent), atomically.

    An existing file of another schema is left untouched and raises ResultsError.
    Returns every row now in the file.
    """
    path = Path(path)
    merged = merge_rows(load_results(path) if path.exists() else [], rows)
    write_json(path, {"schema_version": SCHEMA_VERSION, "rows": [r.to_dict() for r in merged]})
    return merged
