"""Losses, class weights, EMA and train+val splits against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from edgeseg.config import LOSSES, recipe_from_dict
from edgeseg.data import classes as C
from edgeseg.data.dataset import train_dataset, val_is_held_out
from edgeseg.data.stats import class_pixel_counts, count_pixels
from edgeseg.errors import ConfigError
from edgeseg.train import losses
from edgeseg.train.ema import WeightEMA
from edgeseg.train.losses import build_loss, lovasz_softmax, median_frequency_weights, ohem_cross_entropy, total_loss


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """(1, C, 1, N) logits whose softmax is exactly `probs` (one row of class probabilities per pixel)."""
    return torch.tensor(probs).log().T[None, :, None, :]


def _cfg(**kw: object) -> SimpleNamespace:
    base = {"loss": "ce", "ohem_thresh": 0.7, "ohem_min_kept": 0, "lovasz_weight": 1.0}
    return SimpleNamespace(**{**base, **kw})


class ToySource:
    """Three classes; two 10x10 masks: A = 80 px of 0 + 20 of 1, B = 50 of 0 + 50 of 2 (+ void)."""

    classes = C.generic(3, ["a", "b", "c"])

    def __init__(self) -> None:
        a = np.zeros((10, 10), np.uint8)
        a.flat[:20] = 1
        b = np.zeros((10, 12), np.uint8)
        b[:, :5] = 2
        b[:, 10:] = 255  # void pixels count for nothing
        self.masks = [a, b]

    def __len__(self) -> int:
        return 2

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((*self.masks[i].shape, 3), np.uint8), self.masks[i]


def test_median_frequency_weights_of_a_toy_set() -> None:
    pixels, image_pixels = count_pixels(ToySource())
    assert pixels.tolist() == [130, 20, 50]
    assert image_pixels.tolist() == [200, 100, 100]
    # f = [0.65, 0.2, 0.5], median 0.5 -> w = [0.5/0.65, 2.5, 1.0]
    w = median_frequency_weights(torch.from_numpy(pixels), torch.from_numpy(image_pixels))
    assert w.tolist() == pytest.approx([0.5 / 0.65, 2.5, 1.0], rel=1e-6)
    soft = median_frequency_weights(torch.from_numpy(pixels), torch.from_numpy(image_pixels), power=0.5, max_weight=1.5)
    assert soft.tolist() == pytest.approx([math.sqrt(0.5 / 0.65), 1.5, 1.0], rel=1e-6)


def test_absent_class_gets_weight_zero_not_nan() -> None:
    w = median_frequency_weights(torch.tensor([10, 0, 30]), torch.tensor([100, 0, 100]))
    assert w.tolist() == pytest.approx([2.0, 0.0, 2 / 3])


def test_class_counts_are_cached_by_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))
    source = ToySource()
    assert class_pixel_counts(source)[0].tolist() == [130, 20, 50]
    (entry,) = (tmp_path / "class_counts").glob("*.json")
    entry.write_text(json.dumps({"pixels": [1, 2, 3], "image_pixels": [4, 5, 6]}))
    assert class_pixel_counts(source)[0].tolist() == [1, 2, 3]  # read from the cache, not recounted
    entry.write_text("{not json")
    assert class_pixel_counts(source)[0].tolist() == [130, 20, 50]  # a damaged entry is recounted
    assert json.loads(entry.read_text())["pixels"] == [130, 20, 50]  # ... and rewritten


def test_ohem_keeps_exactly_the_hardest_pixels() -> None:
    # p(true class) of the 5 pixels: 0.9, 0.2, 0.6, 0.95, 0.4 (true class 0 everywhere)
    p = [0.9, 0.2, 0.6, 0.95, 0.4]
    logits = _logits([[q, 1 - q] for q in p])
    target = torch.zeros(1, 1, 5, dtype=torch.long)
    ce = [-math.log(q) for q in p]
    # threshold 0.7: pixels 0.2, 0.6, 0.4 are hard
    assert ohem_cross_entropy(logits, target, 0.7, 0).item() == pytest.approx((ce[1] + ce[2] + ce[4]) / 3, rel=1e-5)
    # min_kept 2 with threshold 0.3: only 0.2 is below it, so the 2 hardest (0.2, 0.4) are kept
    assert ohem_cross_entropy(logits, target, 0.3, 2).item() == pytest.approx((ce[1] + ce[4]) / 2, rel=1e-5)
    # ignored pixels are never kept, however hard
    target[0, 0, 1] = 255
    assert ohem_cross_entropy(logits, target, 0.7, 0).item() == pytest.approx((ce[2] + ce[4]) / 2, rel=1e-5)


def test_lovasz_hand_values() -> None:
    perfect = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])  # pixel 0 -> class 0, pixel 1 -> class 1
    assert lovasz_softmax(perfect, torch.tensor([[[0, 1]]])).item() == pytest.approx(0.0, abs=1e-6)
    # one class present, p = 0.8 and 0.6: the Jaccard surrogate is 1 - mean(p) = 0.3
    assert lovasz_softmax(_logits([[0.8, 0.2], [0.6, 0.4]]), torch.tensor([[[0, 0]]])).item() == pytest.approx(0.3, rel=1e-5)
    # labels [0, 1], p = [0.9, 0.1], [0.3, 0.7]. Class 0: errors [0.1, 0.3], sorted fg [0, 1],
    # Jaccard steps [0.5, 0.5] -> 0.2. Class 1: errors [0.1, 0.3], sorted fg [1, 0], steps [1, 0]
    # -> 0.3. Mean 0.25.
    assert lovasz_softmax(_logits([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([[[0, 1]]])).item() == pytest.approx(0.25, rel=1e-5)


def _lovasz_by_definition(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Berman et al. (2018), one class at a time in plain Python loops: for each class
    present, sort the errors, and weigh each by the step of the Jaccard loss it causes."""
    terms = []
    for c in sorted(set(labels.tolist())):
        fg = [1.0 if v == c else 0.0 for v in labels.tolist()]
        errors = [abs(f - p) for f, p in zip(fg, probs[:, c], strict=True)]
        order = sorted(range(len(fg)), key=lambda i: -float(errors[i]))
        total, inter, union, prev, term = sum(fg), sum(fg), sum(fg), 0.0, 0.0
        for i in order:
            inter, union = inter - fg[i], union + (1.0 - fg[i])
            jac = 1.0 - inter / union
            term = term + errors[i] * (jac - prev)
            prev = jac
        assert total > 0
        terms.append(term)
    return torch.stack(terms).mean()


def test_lovasz_matches_the_paper_s_algorithm_with_void_and_absent_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 4))  # class 4 never appears
    target[0, 0, :2] = C.IGNORE_INDEX
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 5)
    keep = target.flatten() != C.IGNORE_INDEX
    want = _lovasz_by_definition(probs[keep], target.flatten()[keep])
    (g_want,) = torch.autograd.grad(want, logits)
    # Bins so fine that no two of these errors share one: the sorted algorithm's loss and gradient.
    monkeypatch.setattr(losses, "LOVASZ_BINS", 1 << 18)
    got = lovasz_softmax(logits, target)
    (g_got,) = torch.autograd.grad(got, logits)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-7)
    # In blocks of one and of three classes (memory-bounded), the same loss and gradients.
    for block in (target.numel(), 3 * target.numel()):
        monkeypatch.setattr(losses, "LOVASZ_BLOCK", block)
        again = lovasz_softmax(logits, target)
        assert again.item() == pytest.approx(want.item(), rel=1e-5)
        torch.testing.assert_close(torch.autograd.grad(again, logits)[0], g_want, rtol=1e-4, atol=1e-7)


def test_lovasz_bins_tie_errors_with_the_mean_step_of_each_kind() -> None:
    # One foreground pixel (p 0.7, error 0.3) and one background pixel (p 0.3, error 0.3) tie.
    # Sorted foreground first, the Jaccard steps are (1, 0); background first, (0.5, 0.5); the loss
    # is 0.3 either way. Evenly interleaved along the bin (I: 1 -> 0, U: 1 -> 2), the foreground
    # pixel's share of the step is the integral of 1 / (1 + t) over [0, 1] = ln 2, the background's
    # 1 - ln 2: weights between the two orders'.
    p = torch.tensor([[[0.7, 0.3]]], dtype=torch.float64)
    signed, const = losses._lovasz_signed_weights(p, torch.tensor([[[True, False]]]), torch.ones(1, 1, 2, dtype=torch.bool))
    torch.testing.assert_close(signed, torch.tensor([[[-math.log(2), 1 - math.log(2)]]]), rtol=1e-6, atol=0)
    assert (p * signed).sum().item() + const.item() == pytest.approx(0.3, rel=1e-6)
    # A lone foreground pixel in its bin takes the whole step 1 / U, a lone background pixel I / (U (U + 1)).
    p = torch.tensor([[[0.9, 0.6, 0.2]]], dtype=torch.float64)  # errors 0.1, 0.6 (background), 0.8
    signed, _ = losses._lovasz_signed_weights(p, torch.tensor([[[True, False, True]]]), torch.ones(1, 1, 3, dtype=torch.bool))
    # order by error: 0.8 (fg: I 2 -> 1, U 2, step 1/2), 0.6 (bg: U 2 -> 3, step 1/2 - 1/3), 0.1 (fg: I 1 -> 0, U 3, step 1/3)
    torch.testing.assert_close(signed, torch.tensor([[[-1 / 3, 1 / 2 - 1 / 3, -1 / 2]]]), rtol=1e-6, atol=0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), pixels=st.integers(1, 400), classes=st.integers(2, 6), scale=st.floats(0.1, 8.0))
def test_lovasz_within_two_bins_of_the_sorted_algorithm(seed: int, pixels: int, classes: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, classes, 1, pixels, generator=gen) * scale
    target = torch.randint(0, classes, (1, 1, pixels), generator=gen)
    target[torch.rand(1, 1, pixels, generator=gen) < 0.1] = C.IGNORE_INDEX
    keep = target.flatten() != C.IGNORE_INDEX
    if not keep.any():
        return
    probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, classes).double()
    want = _lovasz_by_definition(probs[keep], target.flatten()[keep]).item()
    assert abs(lovasz_softmax(logits, target).item() - want) <= 2 / losses.LOVASZ_BINS + 1e-6


def test_composed_loss_and_aux_weight() -> None:
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    ce, lov = F.cross_entropy(logits, target), lovasz_softmax(logits, target)
    fn = build_loss(_cfg(loss="ce+lovasz", lovasz_weight=0.5))
    assert fn(logits, target).item() == pytest.approx(ce.item() + 0.5 * lov.item(), rel=1e-5)
    both = total_loss(build_loss(_cfg()), (logits, aux), target, 0.4)
    assert both.item() == pytest.approx(ce.item() + 0.4 * F.cross_entropy(aux, target).item(), rel=1e-5)
    weights = torch.tensor([1.0, 2.0, 0.5])
    balanced = build_loss(_cfg(loss="balanced"), weights)(logits, target)
    assert balanced.item() == pytest.approx(F.cross_entropy(logits, target, weights).item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_trains_and_ignores_void(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :2] = 255
    fn = build_loss(_cfg(loss=name), torch.ones(3))
    loss = fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert logits.grad is not None and logits.grad[:, :, :2].abs().max().item() == 0.0  # void rows get no gradient
    assert fn(logits, torch.full_like(target, 255)).item() == 0.0  # an all-void batch: zero, not NaN


def test_ema_follows_the_warmup_rule() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.99, 2/11): average = 0 + (1 - 2/11) * (1 - 0)
    assert ema.module.weight.item() == pytest.approx(9 / 11)
    ema.update(model)  # decay 3/12
    assert ema.module.weight.item() == pytest.approx(9 / 11 + (1 - 3 / 12) * (1 - 9 / 11))
    restored = WeightEMA(model, 0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 2 and restored.module.weight.item() == ema.module.weight.item()


def test_train_splits_concatenate_and_mark_val_not_held_out() -> None:
    base = {"data": {"synthetic_num_train": 6, "synthetic_num_val": 4, "synthetic_size": [32, 32], "crop_size": [32, 32]}}
    honest = recipe_from_dict(base)
    both = recipe_from_dict(base, ["data.train_splits=[train, val]"])
    assert val_is_held_out(honest) and not val_is_held_out(both)
    ds = train_dataset(both)
    assert len(ds) == 10
    val_mask = train_dataset(recipe_from_dict(base, ["data.train_splits=[val]"])).source.load(3)[1]
    assert np.array_equal(ds.source.load(9)[1], val_mask)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.loss=ohme",
            "recipe key 'train.loss' = 'ohme' is invalid: use one of ce, ohem, balanced, lovasz, ce+lovasz, ohem+lovasz, "
            "balanced+lovasz (did you mean 'ohem'?)",
        ),
        ("train.ohem_thresh=0", "recipe key 'train.ohem_thresh' = 0.0 is invalid: use a probability in (0, 1], e.g. 0.7"),
        ("train.ohem_min_kept=-1", "recipe key 'train.ohem_min_kept' = -1 is invalid: use a pixel count >= 0, e.g. 100000"),
        ("train.ema=1.0", "recipe key 'train.ema' = 1.0 is invalid: use 0 (off) or a decay in (0, 1), e.g. 0.999"),
        (
            "train.class_weight_power=3",
            "recipe key 'train.class_weight_power' = 3.0 is invalid: use a value in [0, 2] (1: median frequency, 0.5: its square root)",
        ),
        (
            "data.train_splits=[]",
            "recipe key 'data.train_splits' = [] is invalid: give a non-empty list of distinct split names, e.g. [train, val]",
        ),
        (
            "data.train_splits=[train, train]",
            "recipe key 'data.train_splits' = ['train', 'train'] is invalid: give a non-empty list of distinct split names, "
            "e.g. [train, val]",
        ),
    ],
)
def test_loss_keys_are_range_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({}, [override])
    assert str(info.value) == message
