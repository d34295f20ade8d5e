"""Models: shapes at every output stride/head/width, OS switching, ASPP rates, decoder, weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from edgeseg.errors import CheckpointError
from edgeseg.models import HEADS, build_model
from edgeseg.models.backbone import MobileNetV2Encoder
from edgeseg.models.info import gmacs

OUTPUT_STRIDES = (8, 16, 32)
WIDTHS = (0.35, 1.0)
NUM_CLASSES = 3
SIZE = 64


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine terms, so eval outputs depend on them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _dw_convs(encoder: MobileNetV2Encoder) -> list[nn.Conv2d]:
    return [encoder.features[i].depthwise for i in range(1, len(encoder.features))]


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("os_", OUTPUT_STRIDES)
def test_output_and_feature_shapes(x: torch.Tensor, os_: int, head: str, width: float) -> None:
    torch.manual_seed(0)
    model = build_model(num_classes=NUM_CLASSES, output_stride=os_, width_mult=width, head=head).eval()
    with torch.no_grad():
        feats = model.encoder(x)
        out = model(x)
    assert out.shape == (2, NUM_CLASSES, SIZE, SIZE)
    assert torch.isfinite(out).all()
    # Every feature map has the size its declared stride says, and the deepest one is at the OS.
    for f, stride, ch in zip(feats, model.encoder.strides, model.encoder.channels, strict=True):
        assert f.shape[1:] == (ch, SIZE // stride, SIZE // stride)
    assert model.encoder.strides[-1] == os_
    assert feats[-1].shape[-1] == SIZE // os_


def test_aux_head_only_in_training(x: torch.Tensor) -> None:
    model = build_model(num_classes=NUM_CLASSES, width_mult=0.35, aux_loss=True)
    model.train()
    main, aux = model(x)
    assert main.shape == aux.shape == (2, NUM_CLASSES, SIZE, SIZE)
    # The aux head reads the last block of nominal stride 16 (96 channels at width 1.0).
    assert build_model(num_classes=NUM_CLASSES, aux_loss=True).aux.conv[0].in_channels == 96
    model.eval()
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize(("src", "dst"), [(16, 8), (16, 32), (8, 32), (32, 8)])
def test_set_output_stride_matches_model_built_at_that_os(x: torch.Tensor, head: str, src: int, dst: int) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build_model(num_classes=NUM_CLASSES, output_stride=src, width_mult=0.35, head=head))
    before = copy.deepcopy(model.state_dict())
    model.set_output_stride(dst)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "switching the output stride changed weights"
    reference = build_model(num_classes=NUM_CLASSES, output_stride=dst, width_mult=0.35, head=head).eval()
    reference.load_state_dict(before, strict=True)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    ref_convs = dict((n, m) for n, m in reference.named_modules() if isinstance(m, nn.Conv2d))
    for name, conv in convs:
        ref = ref_convs[name]
        assert (conv.stride, conv.dilation, conv.padding) == (ref.stride, ref.dilation, ref.padding), name
    assert model.output_stride == dst and model.encoder.strides == reference.encoder.strides
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_dilated_encoder_computes_strided_features_densely(x: torch.Tensor) -> None:
    """A trous: the OS8/OS16 encoder sampled every 4/2 pixels equals the OS32 one (same weights)."""
    torch.manual_seed(0)
    model = _randomize_bn(build_model(num_classes=NUM_CLASSES, output_stride=32, width_mult=0.35, multi_grid=[1, 2, 4]))
    with torch.no_grad():
        f32 = model.encoder(x)[-1]
        model.set_output_stride(16)
        f16 = model.encoder(x)[-1]
        model.set_output_stride(8)
        f8 = model.encoder(x)[-1]
    assert f16.shape[-1] == 2 * f32.shape[-1] and f8.shape[-1] == 4 * f32.shape[-1]
    torch.testing.assert_close(f16[..., ::2, ::2], f32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f8[..., ::4, ::4], f32, rtol=1e-5, atol=1e-5)


# (stride, dilation) of the depthwise conv of blocks 1..17, written out from the MobileNetV2 table
# (first strides at blocks 2, 4, 7, 14) and the a trous rule: a block whose stride is removed keeps
# the previous dilation, later blocks take the removed stride as dilation.
_S1 = (1, 1)
EXPECTED_DW = {
    32: [_S1, (2, 1), _S1, (2, 1), _S1, _S1, (2, 1)] + [_S1] * 6 + [(2, 1)] + [_S1] * 3,
    16: [_S1, (2, 1), _S1, (2, 1), _S1, _S1, (2, 1)] + [_S1] * 6 + [(1, 1)] + [(1, 2)] * 3,
    8: [_S1, (2, 1), _S1, (2, 1), _S1, _S1, (1, 1)] + [(1, 2)] * 6 + [(1, 2)] + [(1, 4)] * 3,
}


@pytest.mark.parametrize("os_", OUTPUT_STRIDES)
def test_encoder_strides_and_dilations(os_: int) -> None:
    enc = MobileNetV2Encoder(0.35, os_)
    got = [(c.stride[0], c.dilation[0]) for c in _dw_convs(enc)]
    assert got == EXPECTED_DW[os_]
    assert all(c.padding == c.dilation for c in _dw_convs(enc)), "3x3 'same' padding must equal the dilation"


@pytest.mark.parametrize(("os_", "last3"), [(8, (4, 8, 16)), (16, (2, 4, 8)), (32, (1, 2, 4))])
def test_multi_grid_multiplies_last_blocks(os_: int, last3: tuple[int, int, int]) -> None:
    enc = MobileNetV2Encoder(0.35, os_, multi_grid=[1, 2, 4])
    got = [(c.stride[0], c.dilation[0]) for c in _dw_convs(enc)]
    assert got[:-3] == EXPECTED_DW[os_][:-3]
    assert tuple(d for _, d in got[-3:]) == last3


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize(("os_", "rates"), [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
def test_aspp_rates(head: str, os_: int, rates: tuple[int, int, int]) -> None:
    def aspp_rates(model: nn.Module) -> tuple[int, ...]:
        return tuple(branch[0][0].dilation[0] for branch in model.decoder.aspp.atrous)

    built = build_model(num_classes=NUM_CLASSES, output_stride=os_, width_mult=0.35, head=head)
    assert aspp_rates(built) == rates
    for branch in built.decoder.aspp.atrous:
        dw, pw = branch[0][0], branch[1][0]
        assert dw.groups == dw.in_channels and dw.kernel_size == (3, 3) and dw.padding == dw.dilation
        assert pw.kernel_size == (1, 1) and pw.out_channels == 256
    switched = build_model(num_classes=NUM_CLASSES, output_stride=16, width_mult=0.35, head=head)
    switched.set_output_stride(os_)
    assert aspp_rates(switched) == rates


@pytest.mark.parametrize("os_", OUTPUT_STRIDES)
def test_decoder_uses_stride4_features(os_: int) -> None:
    model = build_model(num_classes=NUM_CLASSES, output_stride=os_, width_mult=1.0)
    assert model.encoder.strides[model.low_index] == 4
    assert model.encoder.channels[model.low_index] == 24
    assert model.decoder.low_proj[0].in_channels == 24 and model.decoder.low_proj[0].out_channels == 48
    # The last stride-4 block is the one picked (block 3 of torchvision's features).
    assert model.low_index == 3


@pytest.mark.parametrize("os_", OUTPUT_STRIDES)
def test_s2_decoder_fuses_stride2_features(os_: int) -> None:
    model = build_model(num_classes=NUM_CLASSES, output_stride=os_, width_mult=1.0, head="deeplabv3plus_s2")
    # Block 1 of torchvision's features (16 channels) is the last stride-2 map at every stride.
    assert model.fine_index == 1 and model.encoder.strides[1] == 2 and model.encoder.channels[1] == 16
    fine = model.decoder.fine
    assert fine.skip_proj[0].in_channels == 16 and fine.skip_proj[0].out_channels == 24
    assert fine.reduce[0].in_channels == 256 and model.decoder.classifier.in_channels == 48
    assert build_model(num_classes=NUM_CLASSES, output_stride=os_).decoder.fine is None


def test_s2_decoder_costs_its_hand_counted_macs() -> None:
    """The stride-2 stage adds, at an input of S x S (stride-4 map S/4, stride-2 map S/2):
    reduce 256->48 at S/4; skip 16->24, depthwise 3x3 over 72 and pointwise 72->48 at S/2; and
    the classifier moves from 256 channels at S/4 to 48 at S/2."""
    v3p = build_model(num_classes=NUM_CLASSES, head="deeplabv3plus")
    s2 = build_model(num_classes=NUM_CLASSES, head="deeplabv3plus_s2")
    p4, p2 = (SIZE // 4) ** 2, (SIZE // 2) ** 2
    extra = p4 * 256 * 48 + p2 * (16 * 24 + 72 * 9 + 72 * 48) + NUM_CLASSES * (p2 * 48 - p4 * 256)
    assert (gmacs(s2, (SIZE, SIZE)) - gmacs(v3p, (SIZE, SIZE))) * 1e9 == pytest.approx(extra, rel=1e-9)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert s2.eval()(x).shape == (1, NUM_CLASSES, SIZE, SIZE)


@pytest.mark.parametrize("os_", OUTPUT_STRIDES)
def test_dw_decoder_reads_the_stride4_depthwise_output(x: torch.Tensor, os_: int) -> None:
    """deeplabv3plus_dw: the decoder's low-level input is block 3's depthwise output (24 x 6 = 144
    channels after ReLU6), computed by hand from the block's own layers; the encoder's outputs are
    forward()'s."""
    torch.manual_seed(0)
    model = _randomize_bn(build_model(num_classes=NUM_CLASSES, output_stride=os_, width_mult=1.0, head="deeplabv3plus_dw")).eval()
    assert model.low_index == 3 and model.decoder.low_proj[0].in_channels == 144
    block = model.encoder.features[3]
    seen: list[torch.Tensor] = []
    hook = model.decoder.low_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        out = model(x)
        feats = model.encoder(x)
        by_hand = block.conv[1](block.conv[0](feats[2]))  # expand 1x1 + ReLU6, then depthwise 3x3 + ReLU6
        feats_h, hidden = model.encoder.forward_hidden(x, 3)
    hook.remove()
    assert by_hand.shape == (2, 144, SIZE // 4, SIZE // 4) and by_hand.min() >= 0 and by_hand.max() <= 6
    torch.testing.assert_close(seen[0], by_hand, rtol=0, atol=0)
    torch.testing.assert_close(hidden, by_hand, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(feats_h, feats, strict=True))
    assert out.shape == (2, NUM_CLASSES, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"^block index must be 1\.\.17, got 0$"):
        model.encoder.forward_hidden(x, 0)


def test_dw_decoder_costs_its_hand_counted_macs() -> None:
    """Only the decoder's 1x1 low-level projection changes: 144 instead of 24 input channels to 48, at S/4."""
    v3p = build_model(num_classes=NUM_CLASSES, head="deeplabv3plus")
    dw = build_model(num_classes=NUM_CLASSES, head="deeplabv3plus_dw")
    extra = (SIZE // 4) ** 2 * (144 - 24) * 48
    assert (gmacs(dw, (SIZE, SIZE)) - gmacs(v3p, (SIZE, SIZE))) * 1e9 == pytest.approx(extra, rel=1e-9)
    # The same parameters elsewhere: the encoder's state dict keys and shapes are torchvision's.
    assert {k: v.shape for k, v in dw.encoder.state_dict().items()} == {k: v.shape for k, v in v3p.encoder.state_dict().items()}


def test_deeplabv3_head_has_no_decoder() -> None:
    v3 = build_model(num_classes=NUM_CLASSES, width_mult=0.35, head="deeplabv3")
    v3p = build_model(num_classes=NUM_CLASSES, width_mult=0.35, head="deeplabv3plus")
    assert not hasattr(v3.decoder, "low_proj") and hasattr(v3p.decoder, "low_proj")
    assert gmacs(v3, (SIZE, SIZE)) == pytest.approx(_conv_macs_by_hand(v3) / 1e9, rel=1e-9)
    assert gmacs(v3p, (SIZE, SIZE)) == pytest.approx(_conv_macs_by_hand(v3p) / 1e9, rel=1e-9)


def test_unknown_head_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"^unknown head 'pspnet'; use one of \('deeplabv3plus', 'deeplabv3plus_s2', 'deeplabv3plus_dw', 'deeplabv3'\)$"
    ):
        build_model(num_classes=NUM_CLASSES, head="pspnet")


def test_static_input_size_keeps_output(x: torch.Tensor) -> None:
    model = _randomize_bn(build_model(num_classes=NUM_CLASSES, width_mult=0.35))
    with torch.no_grad():
        dynamic = model(x)
        model.set_input_size((SIZE, SIZE))
        static = model(x)
    torch.testing.assert_close(static, dynamic, rtol=0, atol=0)


# --- backbone weights -------------------------------------------------------------------------


def test_torchvision_state_dict_loads_strictly(tmp_path: Path, x: torch.Tensor) -> None:
    torch.manual_seed(1)
    tv = torchvision.models.mobilenet_v2(weights=None)
    _randomize_bn(tv)
    path = tmp_path / "mnv2.pth"
    torch.save(tv.state_dict(), path)
    model = build_model(num_classes=NUM_CLASSES, output_stride=32, backbone_weights=path).eval()
    state = tv.state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    # Same names and same computation: the encoder's last map is torchvision's features[:-1] output.
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x)[-1], tv.features[:-1](x), rtol=1e-5, atol=1e-5)


def test_wrong_width_state_dict_gives_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "mnv2_035.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None, width_mult=0.5).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_model(num_classes=NUM_CLASSES, backbone_weights=path)
    # The first conv of MobileNetV2 has 32 x width_mult output channels (rounded to a multiple of 8).
    assert str(info.value) == (
        f"backbone weights '{path}': 'features.0.0.weight' has shape (16, 3, 3, 3), the model needs (32, 3, 3, 3); "
        "use model.width_mult 1.0 with these weights"
    )


def test_incomplete_or_unreadable_weights(tmp_path: Path) -> None:
    partial = {k: v for k, v in torchvision.models.mobilenet_v2(weights=None).state_dict().items() if not k.startswith("features.17")}
    torch.save(partial, tmp_path / "partial.pth")
    missing = [k for k in torchvision.models.mobilenet_v2(weights=None).features.state_dict() if k.startswith("17.")]
    assert len(missing) == 18  # block 17: three convs, three BNs of five tensors each (weight, bias, stats, count)
    cases = {
        "partial.pth": f"lack 'features.17.conv.0.0.weight' ({len(missing)} missing); pass a torchvision mobilenet_v2 state dict "
        "with width_mult 1.0",
        "junk.pth": "cannot be read as a state dict (UnpicklingError)",
        "missing.pth": "not found; pass a torchvision mobilenet_v2 state dict (e.g. ../shared/weights/mobilenet_v2_imagenet.pth) "
        "with model.backbone_weights",
    }
    (tmp_path / "junk.pth").write_text("not a state dict")
    for name, reason in cases.items():
        with pytest.raises(CheckpointError) as info:
            build_model(num_classes=NUM_CLASSES, backbone_weights=tmp_path / name)
        assert str(info.value) == f"backbone weights '{tmp_path / name}' {reason}"


def test_shared_imagenet_backbone_loads_strictly(backbone_weights: Path) -> None:
    model = build_model(num_classes=NUM_CLASSES, backbone_weights=backbone_weights)
    state = torch.load(backbone_weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = model.encoder.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in own.items())
    assert len(own) == len([k for k in state if k.startswith("features.") and int(k.split(".")[1]) < 18])


def test_imagenet_offline_gives_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty hub cache and no network: the download must fail and say to pass a local file.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(CheckpointError) as info:
        build_model(num_classes=NUM_CLASSES, backbone_weights="imagenet")
    assert str(info.value) == (
        "cannot download torchvision ImageNet weights (URLError); this machine is offline: pass a local state dict with "
        "model.backbone_weights=PATH"
    )


def _conv_macs_by_hand(model: nn.Module) -> int:
    """Reference: each conv's output elements x (in_channels / groups) x kernel area, summed."""
    macs = 0

    def count(module: nn.Conv2d, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = module.kernel_size
        macs += output.numel() * (module.in_channels // module.groups) * kh * kw

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, SIZE, SIZE))
    for h in hooks:
        h.remove()
    return macs


@pytest.mark.parametrize("os_", OUTPUT_STRIDES)
def test_gmacs_equal_conv_macs_counted_by_hand(os_: int) -> None:
    model = build_model(num_classes=NUM_CLASSES, output_stride=os_, width_mult=0.35).eval()
    assert gmacs(model, (SIZE, SIZE)) == pytest.approx(_conv_macs_by_hand(model) / 1e9, rel=1e-9)
