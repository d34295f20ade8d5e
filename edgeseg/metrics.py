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
