"""Per-layer INT8 sensitivity: layers found by tracing, a deliberately broken layer ranked first,
the cumulative curve measured, the drop rule by hand."""

from __future__ import annotations

import pytest
import torch

from edgeseg.errors import CheckpointError, ConfigError
from edgeseg.models import build_model
from edgeseg.quant import quantize, set_quant_enabled
from edgeseg.quant.quantize import quant_convs, quantizers
from edgeseg.train.sensitivity import (
    LayerScore,
    Sensitivity,
    class_excess,
    curve_order,
    keep_float,
    layers_for_drop,
    layers_of,
    sensitivity,
)

NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = build_model(num_classes=4, output_stride=16, width_mult=0.35).eval()
    model.set_input_size((32, 32))
    with torch.no_grad():  # a random model predicts one class everywhere; this one's argmax follows its input
        model.decoder.classifier.bias.zero_()
        model.decoder.classifier.weight.mul_(10)
    g = torch.Generator().manual_seed(0)
    q = quantize(model, {"method": "max"}, lambda m: [m(torch.randn(2, 3, 32, 32, generator=g)) for _ in range(3)]).eval()
    x = torch.randn(6, 3, 32, 32, generator=g)
    with torch.no_grad():
        set_quant_enabled(q, False)
        y = q(x).argmax(1)  # the float model's own labels: float mIoU is 100 by construction
        set_quant_enabled(q, True)
    return q, [(x, y)]  # one batch: ~80 forwards of it in the sensitivity test


def test_layers_cover_every_quantizer_and_conv_once(tiny: tuple) -> None:
    q, batches = tiny
    layers = layers_of(q, batches[0][0][:1])
    acts = [layer.activation for layer in layers if layer.activation]
    convs = [c for layer in layers for c in layer.convs]
    assert sorted(acts) == sorted(n for n, _ in quantizers(q))
    assert sorted(convs) == sorted(n for n, _ in quant_convs(q)) and len(convs) == len(set(convs))
    first = next(layer for layer in layers if layer.activation == "encoder.input_q")
    assert first.convs == ["encoder.features.0.0"]  # the stem reads the quantized input, nothing else does
    stem = dict(quant_convs(q))["encoder.features.0.0"]  # 3x3 stride 2 on 32x32: a 16x16 output, 3 input channels
    assert first.macs == 16 * 16 * stem.out_channels * 3 * 9
    assert sum(layer.macs for layer in layers) > first.macs > 0


def test_a_broken_layer_ranks_first_and_float_fixes_it(tiny: tuple) -> None:
    q, batches = tiny
    layers = layers_of(q, batches[0][0][:1])
    broken = next(layer for layer in layers if layer.name == "decoder.cat_q")  # the decoder's fused input: every pixel reads it
    quantizer = dict(quantizers(q))[broken.activation]
    saved = quantizer.amax.clone()
    quantizer.amax.fill_(1e6)  # scale 7874: every value of that tensor rounds to 0, the layer is wrecked
    try:
        result = sensitivity(q, batches, NAMES, 255, cumulative=3)
    finally:
        quantizer.amax.copy_(saved)
    assert result.float_miou == pytest.approx(100.0)
    gains = [(s.name, round(s.gain, 2)) for s in result.layers[:4]]
    assert result.layers[0].name == broken.name and result.layers[0].gain > 10, gains
    assert result.layers[0].gain > 5 * max(abs(s.gain) for s in result.layers[1:])
    first = result.cumulative[0]
    assert first == {"k": 1, "miou": pytest.approx(result.layers[0].miou), "per_class_iou": first["per_class_iou"], "layers": [broken.name]}
    assert first["per_class_iou"] == pytest.approx(result.layers[0].per_class_iou)  # the same model state, scored twice
    assert [p["k"] for p in result.cumulative] == [1, 2, 3] and result.images == 6

    assert q.edgeseg_quant["disabled"] == [] and all(m.mode == "quant" for _, m in quantizers(q))  # the model is left as it was


def test_ranking_on_fewer_images_and_a_reused_ranking(tiny: tuple) -> None:
    """Layers ranked on 2 images, the curve and its reference on all 6; then that ranking reused:
    no pass per layer, the same curve. References: the 6-image run of the same layers alone."""
    q, batches = tiny
    few = [(batches[0][0][:2], batches[0][1][:2])]
    full = sensitivity(q, batches, NAMES, 255, cumulative=2)  # everything on the 6 images
    calls: list[tuple[int, int]] = []
    two = sensitivity(q, few, NAMES, 255, cumulative=2, curve_batches=batches, progress=lambda i, n: calls.append((i, n)))
    n_layers = len(full.layers)
    assert calls[-1] == (n_layers + 2 + 2 + 2, n_layers + 2 + 2 + 2)  # ranking refs + layers, curve refs, curve
    assert two.images == 6 and two.ranking is not None and two.ranking["images"] == 2 and two.ranking["source"] is None
    assert (two.float_miou, two.int8_miou) == (pytest.approx(full.float_miou), pytest.approx(full.int8_miou))  # the curve's reference
    for point in two.cumulative:  # each point on 6 images: what the full run measured for the same layers
        if point["k"] == 1:
            alone = next(s for s in full.layers if s.name == point["layers"][0])
            assert point["miou"] == pytest.approx(alone.miou) and point["per_class_iou"] == pytest.approx(alone.per_class_iou)
    assert {s.name for s in two.layers} == {s.name for s in full.layers}

    calls.clear()
    again = sensitivity(
        q,
        few,
        NAMES,
        255,
        cumulative=2,
        curve_batches=batches,
        ranking=full,
        ranking_source="f.json",
        progress=lambda i, n: calls.append((i, n)),
    )
    assert calls[-1] == (4, 4)  # 2 reference passes + 2 curve points, no pass per layer
    assert again.layers == full.layers and again.ranking is not None and again.ranking["source"] == "f.json"
    assert again.ranking["images"] == 6 and again.ranking["int8_miou"] == pytest.approx(full.int8_miou)
    assert [(p["layers"], round(p["miou"], 6)) for p in again.cumulative] == [(p["layers"], round(p["miou"], 6)) for p in full.cumulative]

    foreign = Sensitivity(6, 100.0, 90.0, {}, {}, [LayerScore("decoder.elsewhere", [], 95.0, 5.0, {})])
    with pytest.raises(CheckpointError, match="'decoder.elsewhere', which is not a layer of this model"):
        sensitivity(q, few, NAMES, 255, cumulative=1, ranking=foreign)


def test_keep_float_switches_weights_and_activation(tiny: tuple) -> None:
    q, batches = tiny
    layer = next(layer for layer in layers_of(q, batches[0][0][:1]) if layer.activation and layer.convs)
    keep_float(q, [layer], base=["already.float"])
    try:
        assert dict(quantizers(q))[layer.activation].mode == "off"
        assert all(not conv.quant_weight for name, conv in quant_convs(q) if name in layer.convs)
        assert all(conv.quant_weight for name, conv in quant_convs(q) if name not in layer.convs)
        assert "already.float" in q.edgeseg_quant["disabled"]
    finally:
        keep_float(q, [])


def _result(float_miou: float, int8_miou: float, curve: list[float]) -> Sensitivity:
    layers = [LayerScore(f"l{i}", [], 0.0, 0.0, {}) for i in range(len(curve))]
    cumulative = [{"k": k + 1, "miou": m, "layers": [f"l{i}" for i in range(k + 1)]} for k, m in enumerate(curve)]
    return Sensitivity(8, float_miou, int8_miou, {}, {}, layers, cumulative)


def test_layers_for_drop_by_hand() -> None:
    assert layers_for_drop(_result(70.0, 69.9, [70.0]), 0.2) == []  # already within the drop
    assert layers_for_drop(_result(70.0, 69.0, [69.5, 69.85, 70.0]), 0.2) == ["l0", "l1"]  # 0.15 <= 0.2
    with pytest.raises(ConfigError, match=r"keeping 2 layers in float gives 0.50"):
        layers_for_drop(_result(70.0, 69.0, [69.4, 69.5]), 0.2)


# Two classes, float: thin 40, wide 80 (mIoU 60). Full INT8 loses 2.0 on thin and 0.4 on wide.
FLOAT_PC = {"thin": 40.0, "wide": 80.0}


def _classes(thin: float, wide: float) -> dict[str, float | None]:
    return {"thin": thin, "wide": wide}


def test_class_limit_by_hand() -> None:
    # Layer "a" recovers mIoU on the wide class only; layer "b" rescues the thin class.
    a = LayerScore("a", [], 59.8, 0.6, _classes(38.0, 81.6))
    b = LayerScore("b", [], 59.6, 0.4, _classes(39.6, 79.6))
    # class_excess: IoU over a 1.0 limit, summed: full INT8 thin 2.0 -> 1.0 over; a: 1.0; b: 0 (0.4 lost).
    assert class_excess(FLOAT_PC, _classes(38.0, 79.6), 1.0) == pytest.approx(1.0)
    assert class_excess(FLOAT_PC, a.per_class_iou, 1.0) == pytest.approx(1.0)
    assert class_excess(FLOAT_PC, b.per_class_iou, 1.0) == 0.0
    assert class_excess(FLOAT_PC, {"thin": None, "wide": 70.0}, 1.0) == pytest.approx(9.0)  # an unscored class is skipped
    assert class_excess(FLOAT_PC, None, 1.0) == float("inf")
    # Ranked by mIoU gain, a comes first; ordered for a 1-IoU class limit, b does.
    assert curve_order([a, b], FLOAT_PC, None) == ["a", "b"]
    assert curve_order([a, b], FLOAT_PC, 1.0) == ["b", "a"]
    curve = [
        {"k": 1, "miou": 59.6, "per_class_iou": _classes(39.6, 79.6), "layers": ["b"]},
        {"k": 2, "miou": 60.0, "per_class_iou": _classes(39.8, 80.2), "layers": ["b", "a"]},
    ]
    result = Sensitivity(8, 60.0, 58.8, FLOAT_PC, _classes(38.0, 79.6), [a, b], curve, max_class_drop=1.0)
    assert layers_for_drop(result, 0.3) == ["b", "a"]  # mIoU alone: within 0.3 only at k=2
    assert layers_for_drop(result, 1.0) == ["b"]  # full INT8 loses 1.2 mIoU
    assert layers_for_drop(result, 1.0, 1.0) == ["b"]  # 0.4 mIoU and thin -0.4: both within at k=1
    assert layers_for_drop(result, 1.5) == []  # full INT8: 1.2 mIoU, within 1.5 when classes are not limited
    with pytest.raises(ConfigError, match="no class losing more than 0.1 IoU"):
        layers_for_drop(result, 1.5, 0.1)  # thin never gets within 0.1
    # A file written before curves had classes: a class limit cannot be met from it.
    old = Sensitivity(
        8, 60.0, 58.8, FLOAT_PC, _classes(38.0, 79.6), [a, b], [{k: v for k, v in p.items() if k != "per_class_iou"} for p in curve]
    )
    with pytest.raises(ConfigError, match="reaches a drop of 1.0 mIoU with no class"):
        layers_for_drop(old, 1.0, 1.0)


def test_class_limited_order_weighs_what_a_layer_fixes_by_its_cost() -> None:
    # Full INT8 loses 3.0 on thin (2.0 over a 1.0 limit). The model: 1000 MACs; FREE_SHARE 1 %.
    int8 = _classes(37.0, 80.0)
    big = LayerScore("big", [], 60.0, 1.0, _classes(40.0, 80.0), macs=100)  # removes 2.0 for 10 %: 20 per unit share
    cheap = LayerScore("cheap", [], 59.5, 0.5, _classes(39.0, 80.0), macs=5)  # removes 1.0 for 0.5 % (counts 1 %): 100
    free = LayerScore("free", [], 59.2, 0.2, _classes(38.5, 80.0), macs=0)  # removes 0.5 for 0 % (counts 1 %): 50
    none = LayerScore("none", [], 59.9, 0.9, _classes(37.0, 80.5), macs=1)  # removes nothing: last, whatever its gain
    scores = [big, none, cheap, free]  # as ranked by mIoU gain
    assert curve_order(scores, FLOAT_PC, 1.0, int8_pc=int8, total_macs=1000) == ["cheap", "free", "big", "none"]
    assert curve_order(scores, FLOAT_PC, 1.0) == ["big", "cheap", "free", "none"]  # no costs: least excess first
    assert curve_order(scores, FLOAT_PC, None, int8_pc=int8, total_macs=1000) == ["big", "none", "cheap", "free"]  # mIoU rank
    old = LayerScore("old", [], 59.0, 0.0, _classes(40.0, 80.0))  # a file without costs: no cost weighting at all
    assert curve_order([*scores, old], FLOAT_PC, 1.0, int8_pc=int8, total_macs=1000) == ["big", "cheap", "old", "free", "none"]


def test_fp32_model_is_refused() -> None:
    model = build_model(num_classes=4, output_stride=16, width_mult=0.35).eval()
    with pytest.raises(CheckpointError, match="needs an INT8 checkpoint"):
        layers_of(model, torch.randn(1, 3, 64, 64))
