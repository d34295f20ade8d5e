"""Helpers the targets share: verification images, argmax agreement, the INT8-ranges check and
the source ONNX every target starts from. Targets import these; no target imports another.

numpy only at import time; torch, onnx and the data loaders are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import CheckpointError, DataError, NumericalError, TargetError, missing_dependency

log = logging.getLogger(__name__)

# The export gates: the argmax agreement an artifact must keep with its reference on the
# verification images, or the export fails (NumericalError). Tests import these; never lower
# them to make an export pass.
# A float conversion (FP32, or FP16 weights/compute) against the FP32 model: the class of nearly
# every pixel survives; a wrong weight, layout or an FP16 overflow drops far below.
FLOAT_AGREEMENT = 0.995
# An INT8 artifact against its INT8 reference (the same Q/DQ model in another runtime, or the FP32
# model for a post-training quantizer that brings its own ranges). Two INT8 engines accumulate and
# requantize differently, so near-tied logits flip on a few more pixels than a float conversion
# allows. Measured on the signed grid: CamVid val, QAT model 99.48% (OS32), PTQ max 99.34% (OS16);
# the tiny smoke model, whose logits are close together, 98.9-99.0%. A conversion bug (a wrong
# scale, a lost Q/DQ) drops far below this.
INT8_AGREEMENT = 0.98


# Gates that `export --force` may keep an artifact past (edgeseg.export.artifacts): inside
# forced_gates(), a failed gate is recorded in the list it yields instead of raised.
_FORCED: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("edgeseg_forced_gates", default=None)


def gate(ok: bool, error: NumericalError, **figures: Any) -> None:
    """A verification gate: raise `error` unless `ok`; under forced_gates() record it (with its figures) instead."""
    if ok:
        return
    failures = _FORCED.get()
    if failures is None:
        raise error
    failures.append({"error": str(error), **figures})
    log.warning("verification failed, kept because of --force: %s", error)


@contextlib.contextmanager
def forced_gates() -> Iterator[list[dict[str, Any]]]:
    """Within this block, failed gates are collected in the yielded list instead of raised."""
    failures: list[dict[str, Any]] = []
    token = _FORCED.set(failures)
    try:
        yield failures
    finally:
        _FORCED.reset(token)


def require_int8_ranges(model: Any, checkpoint: Any, also: str = "") -> None:
    """Raise the one error for an INT8 export of a checkpoint that has no quantization ranges.

    Args:
        model: the loaded model (None: the caller already knows it has no ranges).
        checkpoint: its path, for the message.
        also: a target's extra way out (e.g. OpenVINO's --ptq nncf), appended to the fix.
    """
    if model is not None:
        from edgeseg.quant import is_quantized

        if is_quantized(model):
            return
    raise CheckpointError(
        f"checkpoint '{checkpoint}' has no INT8 ranges; run 'edgeseg calibrate {checkpoint} --calib LIST --out ptq.pt' "
        f"and export ptq.pt, or train with QAT (edgeseg train RECIPE --qat){', ' + also if also else ''}"
    )


def verification_frames(meta: dict[str, Any], count: int, split: str | None = None) -> tuple[list[np.ndarray], str]:
    """Up to `count` uint8 H x W x 3 images from the artifact's data set, resized to its input size.

    Returns (frames, description). Uses the data set meta names (CamVid val, synthetic scenes,
    ...); when its root is absent here, falls back to the built-in synthetic scenes and says so
    in the description, which exporters record in meta.json.
    """
    from edgeseg.data import open_source
    from edgeseg.data.preprocess import resize_image

    d = meta["data"]
    split = split or d.get("split") or "val"
    try:
        source = open_source(d["format"], d.get("root"), split, d.get("synthetic"))
        desc = f"{d['format']} {split}"
    except DataError as exc:
        log.warning("verification data unavailable (%s); using synthetic scenes", exc)
        source = open_source("synthetic", None, "val", {"num_val": count, "size": meta["input_size"]})
        desc = f"synthetic val (fallback: {d['format']} data not found)"
    size = tuple(meta["input_size"])
    n = min(count, len(source))
    # Spread the picks over the split rather than taking its first (often similar) frames.
    picks = np.unique(np.linspace(0, len(source) - 1, n).round().astype(int))
    frames = [np.asarray(resize_image(source.load(int(i))[0], size), dtype=np.uint8) for i in picks]
    return frames, f"{desc}, {len(frames)} images"


def verification_images(meta: dict[str, Any], count: int, split: str | None = None) -> tuple[list[np.ndarray], str]:
    """verification_frames preprocessed: float32 1x3xHxW, normalised as the eval transform does."""
    from edgeseg.data.preprocess import preprocess

    frames, desc = verification_frames(meta, count, split)
    norm = meta["normalization"]
    return [preprocess(f, None, norm["mean"], norm["std"]) for f in frames], desc


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
    from edgeseg.export.onnx_export import export_onnx

    if int8:
        require_int8_ranges(model, meta.get("source_checkpoint"))
    source = model if int8 else float_model_of(model)
    return export_onnx(source, path, input_size=tuple(meta["input_size"]), meta=meta, opset=opset, dynamic_batch=dynamic_batch, check=True)


def onnx_session(onnx_path: Path | bytes, threads: int = 2, extra: str = "onnx", *, literal: bool = False) -> Any:
    """An onnxruntime CPU session of an ONNX file or serialized model (the reference converted models are compared with).

    literal: run the graph as written, with no graph optimizations. onnxruntime 1.32's CPU Q/DQ
    transformers miscompute Q/DQ graphs with FP16 scales (the Jetson INT8 bundle: CamVid OS16 83 %
    class agreement with its own unoptimised run, 99.8 % with session.disable_quant_qdq, 0.3 % on the
    smoke model), so such a graph is checked literally.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_dependency("onnxruntime", extra) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if literal:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def onnx_reference(onnx_path: Path, images: list[np.ndarray], extra: str = "onnx", *, literal: bool = False) -> np.ndarray:
    """Outputs of an ONNX file in onnxruntime (CPU) for `images`, concatenated (literal: see onnx_session)."""
    sess = onnx_session(onnx_path, 2, extra, literal=literal)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x})[0] for x in images])
