"""Confusion matrix against hand-computed values and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgeseg.metrics import ConfusionMatrix, class_delta_text, worst_class

# truth / prediction pairs: (0,0) (0,1) (1,1) (1,2) (2,2) and one ignored pixel.
TARGET = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
PRED = np.array([[0, 1, 1], [2, 2, 0]], np.int64)


def test_hand_computed_matrix_and_scores() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    np.testing.assert_array_equal(cm.mat, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    # IoU = TP / (row + col - TP): 1/(2+1-1), 1/(2+2-1), 1/(1+2-1)
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1 / 3, 1 / 2])
    s = cm.summary(["a", "b", "c"])
    assert s["miou"] == pytest.approx(100 * 4 / 9)
    assert s["pixel_acc"] == pytest.approx(60.0)
    assert s["pixels"] == 5
    assert s["per_class_iou"] == {"a": 50.0, "b": pytest.approx(33.333, abs=1e-3), "c": 50.0}


def test_errors_by_hand() -> None:
    # The matrix above: rows truth a, b, c; columns prediction.  a: [1, 1, 0], b: [0, 1, 1], c: [0, 0, 1].
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    e = cm.errors(["a", "b", "c"])
    assert e["per_class_recall"] == {"a": 50.0, "b": 50.0, "c": 100.0}  # TP / truth row
    assert e["per_class_precision"] == {"a": 100.0, "b": 50.0, "c": 50.0}  # TP / prediction column
    assert e["missed_as"] == {"a": {"class": "b", "percent": 50.0}, "b": {"class": "c", "percent": 50.0}, "c": None}
    assert e["false_positives_from"] == {"a": None, "b": {"class": "a", "percent": 50.0}, "c": {"class": "b", "percent": 50.0}}
    assert e["confusion"]["counts"] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]] and e["confusion"]["rows"] == "truth"
    # A class never predicted and never true: no recall, no precision.
    empty = ConfusionMatrix(5)
    empty.update(PRED, TARGET)
    assert empty.errors()["per_class_recall"]["4"] is None and empty.errors()["per_class_precision"]["4"] is None


def test_absent_class_is_nan_and_excluded_but_false_positive_counts() -> None:
    cm = ConfusionMatrix(5)
    cm.update(PRED, TARGET)
    iou = cm.iou()
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    s = cm.summary()
    assert s["miou"] == pytest.approx(100 * 4 / 9)
    assert s["per_class_iou"]["3"] is None
    # Class 4 predicted where the truth is 0: it is no longer absent, its IoU 0 lowers the mean.
    cm.update(np.array([4]), np.array([0]))
    assert cm.iou()[4] == 0.0
    assert cm.iou()[0] == pytest.approx(1 / 3)  # row 0 now has 3 pixels, 1 right
    assert cm.summary()["miou"] == pytest.approx(100 * (1 / 3 + 1 / 3 + 1 / 2 + 0) / 4)


def test_custom_ignore_index_and_empty() -> None:
    cm = ConfusionMatrix(3, ignore_index=2)
    cm.update(PRED, np.where(TARGET == 255, 0, TARGET))  # the old ignore pixel is now truth 0, pred 0
    np.testing.assert_array_equal(cm.mat, [[2, 1, 0], [0, 1, 1], [0, 0, 0]])
    empty = ConfusionMatrix(3).summary()
    assert empty["miou"] == 0.0 and empty["pixel_acc"] == 0.0 and empty["pixels"] == 0


def test_matches_brute_force_on_random_labels_and_torch_inputs() -> None:
    rng = np.random.default_rng(0)
    n = 4
    target = rng.integers(0, n, (3, 17, 19))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, n, target.shape)
    ref = np.zeros((n, n), np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != 255:
            ref[t, p] += 1
    whole = ConfusionMatrix(n)
    whole.update(torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_array_equal(whole.mat, ref)
    # Accumulating per image, and merging two halves, give the same matrix.
    parts = [ConfusionMatrix(n), ConfusionMatrix(n)]
    for i in range(3):
        parts[i % 2].update(pred[i], target[i])
    parts[0].merge(parts[1])
    np.testing.assert_array_equal(parts[0].mat, ref)
    iou_ref = [ref[c, c] / (ref[c].sum() + ref[:, c].sum() - ref[c, c]) for c in range(n)]
    np.testing.assert_allclose(whole.iou(), iou_ref)


def test_worst_class_and_its_text_by_hand() -> None:
    ref = {"Sky": 90.0, "Pole": 10.0, "Fence": 50.0, "Car": None}
    got = {"Sky": 89.5, "Pole": 8.75, "Fence": 48.75, "Car": 70.0, "Tree": 80.0}
    # Pole and Fence both lose 1.25: the first of equal losses; Car/Tree are not scored in both.
    assert worst_class(got, ref) == ("Pole", -1.25)
    assert class_delta_text(worst_class(got, ref)) == "Pole -1.25"
    assert class_delta_text(("Sky", 0.004)) == "Sky +0.00"
    assert worst_class(None, ref) is None and worst_class({"Car": 1.0}, ref) is None
    assert class_delta_text(None) is None
