"""benchmarks/lovasz_speed.py: its sorted baseline is Algorithm 1, and its figures are what it measured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgeseg.data import classes as C
from edgeseg.train import losses

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import lovasz_speed as ls  # noqa: E402


def test_the_sorted_baseline_is_the_paper_s_algorithm_on_hand_values() -> None:
    # labels [0, 1], p = [0.9, 0.1], [0.3, 0.7]: class 0 errors [0.1, 0.3], sorted fg [0, 1],
    # Jaccard steps [0.5, 0.5] -> 0.2; class 1 errors [0.1, 0.3], sorted fg [1, 0], steps [1, 0] -> 0.3.
    logits = torch.tensor([[0.9, 0.1], [0.3, 0.7]]).log().T[None, :, None, :]
    assert ls.lovasz_sorted(logits, torch.tensor([[[0, 1]]])).item() == pytest.approx(0.25, rel=1e-5)
    assert ls.lovasz_sorted(logits, torch.full((1, 1, 2), C.IGNORE_INDEX)).item() == 0.0


def test_with_one_error_per_bin_both_forms_agree_and_the_report_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "LOVASZ_BINS", 1 << 18)
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (1, 3, 5))
    target[0, 0, 0] = C.IGNORE_INDEX
    want, got = ls.lovasz_sorted(logits, target), losses.lovasz_softmax(logits, target)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0], rtol=1e-4, atol=1e-7)
    r = ls.compare((1, 4, 8, 8), 4.0, warmup=0, iters=1)
    assert r["bins"] == 1 << 18 and r["loss_abs_diff"] == abs(r["loss_sorted"] - r["loss_histogram"]) <= r["loss_bound"]
    assert r["speedup"] == pytest.approx(r["sorted_s"] / r["histogram_s"]) and r["grad_cosine"] > 0.999


def test_the_batch_has_a_void_border_and_blocks_of_labels() -> None:
    logits, target = ls.batch((2, 3, 20, 40), margin=4.0)
    assert logits.shape == (2, 3, 20, 40) and target.shape == (2, 20, 40)
    assert (target[:, :4] == C.IGNORE_INDEX).all() and (target[:, 4:] < 3).all()
    assert (target[:, 4:16, :16] == target[:, 4:5, :1]).all()  # one label per 16x16 block
