"""One confusion matrix for training, eval and every backend (numpy; torch tensors accepted)."""

from __future__ import annotations

from typing import Any

import numpy as np


class ConfusionMatrix:
    """Accumulates a num_classes x num_classes confusion matrix (rows: truth, cols: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.n = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add predictions and targets of the same shape (ignore pixels skipped)."""
        pred = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred).reshape(-1)
        target = np.asarray(target.detach().cpu() if hasattr(target, "detach") else target).reshape(-1)
        keep = (target != self.ignore_index) & (target < self.n)
        idx = target[keep].astype(np.int64) * self.n + pred[keep].astype(np.int64)
        self.mat += np.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n)

    def merge(self, other: ConfusionMatrix) -> None:
        self.mat += other.mat

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both truth and prediction."""
        tp = np.diag(self.mat).astype(np.float64)
        denom = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def errors(self, names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        """Where each class's IoU goes, in percent: recall (of its true pixels, predicted right),
        precision (of the pixels predicted as it, right), the class its missed pixels go to most
        and the class its false positives come from most; and the confusion counts (rows: truth,
        columns: prediction). None where a class has no true (recall) or predicted (precision) pixel."""
        names = list(names or [str(i) for i in range(self.n)])
        tp, truth, pred = np.diag(self.mat), self.mat.sum(1), self.mat.sum(0)

        def pct(a: Any, b: Any) -> float | None:
            return round(float(a) / float(b) * 100, 3) if b else None

        def top_other(counts: np.ndarray, own: int) -> dict[str, Any] | None:
            other = counts.astype(np.float64).copy()
            other[own] = -1
            j = int(other.argmax())
            total = counts.sum()
            return {"class": names[j], "percent": pct(counts[j], total)} if total and counts[j] > 0 else None

        return {
            "per_class_recall": {n: pct(tp[i], truth[i]) for i, n in enumerate(names)},
            "per_class_precision": {n: pct(tp[i], pred[i]) for i, n in enumerate(names)},
            "missed_as": {n: top_other(self.mat[i], i) for i, n in enumerate(names)},
            "false_positives_from": {n: top_other(self.mat[:, i], i) for i, n in enumerate(names)},
            "confusion": {"rows": "truth", "columns": "prediction", "classes": names, "counts": self.mat.tolist()},
        }

    def summary(self, names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        """mIoU (over classes present), pixel accuracy and per-class IoU, in percent."""
        iou = self.iou()
        total = self.mat.sum()
        names = list(names or [str(i) for i in range(self.n)])
        return {
            "miou": float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else 0.0,
            "pixel_acc": float(np.diag(self.mat).sum() / total * 100) if total else 0.0,
            "per_class_iou": {n: (None if np.isnan(v) else round(float(v) * 100, 3)) for n, v in zip(names, iou)},
            "pixels": int(total),
        }


def worst_class(per_class: dict[str, float | None] | None, reference: dict[str, float | None] | None) -> tuple[str, float] | None:
    """(class, Δ IoU) of the class of `per_class` losing most IoU against `reference` (classes scored
    in both; the first of equal losses); None when none is."""
    if not per_class or not reference:
        return None
    deltas = [(n, v - r) for n, v in per_class.items() if v is not None and (r := reference.get(n)) is not None]
    return min(deltas, key=lambda d: d[1]) if deltas else None


def class_delta_text(worst: tuple[str, float] | None) -> str | None:
    """'Fence -0.95': a worst_class result as the report and the CLI print it; None when unknown."""
    return f"{worst[0]} {worst[1]:+.2f}" if worst else None
