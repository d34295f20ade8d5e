"""Fake quantization against hand-computed values, BN folding, quantize/restore round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeseg.config import recipe_from_dict
from edgeseg.data.classes import SYNTHETIC
from edgeseg.errors import CheckpointError
from edgeseg.models import HEADS, build_model
from edgeseg.quant import (
    QuantConv2d,
    TensorQuantizer,
    fake_quant_channel,
    fake_quant_tensor,
    fold_bn,
    quant_ranges,
    quant_state,
    quantize,
    restore_quantized,
    set_quant_enabled,
)
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


def tiny_model(head: str = "deeplabv3plus", output_stride: int = 16, aux: bool = False, seed: int = 0) -> nn.Module:
    """Width 0.35, 5 classes, with non-trivial BN statistics (a fresh BN is an identity)."""
    torch.manual_seed(seed)
    model = build_model(num_classes=5, output_stride=output_stride, width_mult=0.35, head=head, aux_loss=aux)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def batches(n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 64, 64, generator=g) for _ in range(n)]


def loop_over(xs: list[torch.Tensor]):  # noqa: ANN201
    def loop(model: nn.Module) -> None:
        for x in xs:
            model(x)

    return loop


# --- fake quantization: hand-computed references ---------------------------------------------


def test_per_tensor_fake_quant_hand_values() -> None:
    # amax 1.27 -> scale 0.01; values are rounded to the grid and clamped to [-128, 127] * 0.01.
    x = torch.tensor([0.004, 0.006, -0.016, 0.5, 1.30, -1.30, -1.2849, 0.0])
    want = [0.0, 0.01, -0.02, 0.5, 1.27, -1.28, -1.28, 0.0]
    got = fake_quant_tensor(x, torch.tensor(1.27))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert got.min().item() == pytest.approx(-1.28, abs=1e-6)  # -128 is reachable, +128 is not


def test_per_tensor_fake_quant_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, 10_000).astype(np.float32)
    amax = 3.0
    s = np.float32(amax) / np.float32(127)
    ref = np.clip(np.round(x / s), -128, 127) * s
    got = fake_quant_tensor(torch.from_numpy(x), torch.tensor(amax)).numpy()
    assert np.abs(got - ref).max() < 1e-5
    assert len(np.unique(np.round(got / s))) <= 256


def test_per_channel_fake_quant_hand_values() -> None:
    # Channel 0: amax 1.27 (scale 0.01); channel 1: amax 2.54 (scale 0.02).
    w = torch.tensor([[0.013, -2.0], [0.013, -3.0]]).reshape(2, 2, 1, 1)
    got = fake_quant_channel(w, torch.tensor([1.27, 2.54]), axis=0)
    want = np.array([[0.01, -1.28], [0.02, -2.56]], np.float32).reshape(2, 2, 1, 1)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_straight_through_gradient_is_one_inside_zero_outside() -> None:
    x = torch.tensor([0.2, -0.5, 2.0, -2.0], requires_grad=True)
    fake_quant_tensor(x, torch.tensor(1.27)).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_quant_conv_uses_per_channel_max_of_its_weights() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1, bias=True)
    qconv = QuantConv2d.from_conv(conv)
    w = conv.weight.detach().numpy()
    s = np.abs(w).reshape(3, -1).max(1) / 127
    wq = np.clip(np.round(w / s[:, None, None, None]), -128, 127) * s[:, None, None, None]
    x = torch.randn(1, 4, 8, 8)
    ref = nn.functional.conv2d(x, torch.from_numpy(wq.astype(np.float32)), conv.bias, padding=1)
    assert (qconv(x) - ref).abs().max().item() < 1e-5
    qconv.quant_weight = False
    assert (qconv(x) - conv(x)).abs().max().item() < 1e-6


def test_tensor_quantizer_modes() -> None:
    q = TensorQuantizer(1.27)
    x = torch.tensor([0.004, 2.0])
    assert q(x).tolist() == pytest.approx([0.0, 1.27])
    q.mode = "off"
    assert q(x).tolist() == pytest.approx([0.004, 2.0])


# --- BN folding --------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_fold_bn_is_exact(head: str, output_stride: int) -> None:
    model = tiny_model(head, output_stride)
    folded = fold_bn(model).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input is left alone
    x = batches(1)[0]
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() < 1e-5


# --- quantize / restore ------------------------------------------------------------------------


def test_quantize_keeps_the_model_class_and_leaves_the_float_model() -> None:
    model = tiny_model()
    q = quantize(model, {"method": "max"}, loop_over(batches()))
    assert type(q) is type(model) and q.output_stride == 16
    assert not any(isinstance(m, TensorQuantizer) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(isinstance(m, QuantConv2d) for m in q.modules()) == n_conv
    assert all(v is not None and v > 0 for v in quant_ranges(q).values())
    q.set_output_stride(8)
    assert q(batches(1)[0]).shape == (2, 5, 64, 64)


def test_max_calibration_equals_the_observed_input_range() -> None:
    xs = batches()
    q = quantize(tiny_model(), {"method": "max"}, loop_over(xs))
    want = max(float(x.abs().max()) for x in xs)
    assert float(q.encoder.input_q.amax) == pytest.approx(want, rel=1e-6)


def test_quantized_model_is_close_to_float() -> None:
    model = tiny_model()
    q = quantize(model, {"method": "percentile"}, loop_over(batches()))
    x = batches(1, seed=7)[0]
    with torch.no_grad():
        ref, out = model(x), q(x)
        set_quant_enabled(q, False)
        off = q(x)
    assert (off - ref).abs().max().item() < 1e-5  # quantization off = the folded float model
    err = ((out - ref).norm() / ref.norm()).item()
    assert 0 < err < 0.1  # INT8 changes the logits, but only a little


def test_aux_head_quantizers_without_data_stay_float() -> None:
    q = quantize(tiny_model(aux=True), {"method": "max"}, loop_over(batches(1)))
    # Every quantizer of the aux head (its input and its ReLU output), and only those.
    aux_quantizers = [name for name, m in q.named_modules() if isinstance(m, TensorQuantizer) and name.startswith("aux.")]
    assert aux_quantizers == ["aux.in_q", "aux.conv.3"]
    assert quant_state(q)["disabled"] == aux_quantizers
    q.train()
    logits, aux = q(batches(1)[0])
    assert torch.isfinite(aux).all() and torch.isfinite(logits).all()


def test_restore_quantized_round_trips_the_state_dict() -> None:
    q = quantize(tiny_model(aux=True), {"method": "entropy"}, loop_over(batches()))
    state = quant_state(q)
    fresh = build_model(num_classes=5, width_mult=0.35, aux_loss=True)
    r = restore_quantized(fresh, state)
    r.load_state_dict(q.state_dict(), strict=True)
    r.eval(), q.eval()
    x = batches(1, seed=3)[0]
    with torch.no_grad():
        assert torch.equal(r(x), q(x))
    assert quant_state(r) == state


def test_restore_refuses_a_mismatched_structure() -> None:
    state = quant_state(quantize(tiny_model(), None, loop_over(batches(1))))
    with pytest.raises(CheckpointError) as info:
        restore_quantized(build_model(num_classes=5, width_mult=0.35, head="deeplabv3"), state)
    # The first (sorted) quantizer DeepLabV3+ has and DeepLabV3 lacks: the one at its decoder's concat.
    assert str(info.value) == (
        "the checkpoint's quantizers do not match this model (first difference: 'decoder.cat_q'); it was written with another "
        "quantizer placement: re-run 'edgeseg calibrate' (PTQ) or 'edgeseg train RECIPE --init FP32.pt' (QAT) from its FP32 checkpoint"
    )


def test_quantized_checkpoint_reloads_through_model_from_checkpoint(tmp_path) -> None:  # noqa: ANN001
    recipe = recipe_from_dict({"model": {"width_mult": 0.35}})
    q = quantize(tiny_model(), {"method": "mse"}, loop_over(batches()))
    save_checkpoint(tmp_path / "q.pt", model=q, recipe=recipe, classes=SYNTHETIC, quant=quant_state(q))
    ckpt = load_checkpoint(tmp_path / "q.pt")
    assert ckpt["arch"]["output_stride"] == 16 and ckpt["arch"]["num_classes"] == 5
    r = model_from_checkpoint(ckpt).eval()
    x = batches(1, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(r(x), q.eval()(x))


def test_calibrate_methods_in_one_pass_equals_one_pass_per_method() -> None:
    from edgeseg.quant import calibrate_methods, set_ranges

    model, xs = tiny_model(), batches()
    q = quantize(model, None, None)
    assert all(v is None for v in quant_ranges(q).values())  # no forward loop: no ranges yet
    every = calibrate_methods(q, loop_over(xs))
    for method in ("max", "mse"):
        alone = quant_ranges(quantize(model, {"method": method}, loop_over(xs)))
        assert every[method] == pytest.approx(alone, rel=1e-6)
    set_ranges(q, every["entropy"], "entropy")
    assert quant_state(q)["method"] == "entropy" and quant_ranges(q) == pytest.approx(every["entropy"], rel=1e-6)
