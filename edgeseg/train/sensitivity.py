"""Per-layer INT8 sensitivity: which quantized layers cost mIoU, and how many to keep in float.

A *layer* here is one activation quantizer (a tensor quantized once for all its consumers, as
TensorRT's explicit quantization places it) together with the weights of the convolutions that
read it; a convolution whose input no quantizer feeds is a layer of its own (weights only).
Keeping a layer in float removes its Q/DQ on every target, so the unit measured is the unit a
deployment can switch.

Method: each layer is *kept in float alone* while every other layer stays INT8, and scored on a
fixed subset of images. That measures what keeping it float buys in the model that ships (the
rest quantized), which is the decision to make; quantizing one layer alone in a float model
would measure its damage without the interactions with the other quantized layers. The layers
ranked by mIoU recovered, the cumulative curve keeps the k best in float together (measured,
not summed, with every class's IoU). The images are preprocessed once and kept in memory.

With a per-class limit (`max_class_drop`, points of IoU any class may lose against float) the
curve takes the layers in another order: most IoU points over the limit removed (summed over the
classes, with that layer alone kept float) per share of the model's multiply-adds that turns
float with it, where any layer under FREE_SHARE of them counts as FREE_SHARE; then the layers that
remove nothing, by mIoU recovered. A layer that rescues one thin class enters the curve before
layers that only add mIoU, and of two that rescue it alike the cheap one first: at OS8 the last
block's projection conv (10 % of the model's multiply-adds) fixes what a 0.2 % conv fixes.

The model is measured at the output stride it will be exported at (`output_stride`): dilations
change with it, and so do the activation ranges a layer's INT8 error depends on.

Ranking and choosing may use different images, as NNCF's accuracy control does: the ranking (one
pass per layer) on a few images, the curve (one pass per point, the figures `--max-drop` and
`--max-class-drop` choose from) on more (`curve_images`), or on a ranking measured before
(`ranking`, same checkpoint and stride). A per-class limit needs the curve's images: a class's IoU
on 16 images is not its IoU on the split.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from edgeseg.errors import CheckpointError, ConfigError
from edgeseg.metrics import ConfusionMatrix
from edgeseg.quant import QuantConv2d, TensorQuantizer, is_quantized

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MAX_IMAGES = 10_000
MAX_FILE_BYTES = 64 << 20  # a sensitivity JSON of a few hundred layers is well under 1 MiB
# Keeping float a layer whose convs hold under 1 % of the model's multiply-adds costs about nothing
# next to the timing noise of a whole model: the class-limited curve orders those by IoU fixed alone.
FREE_SHARE = 0.01


@dataclass
class Layer:
    """One switchable unit: an activation quantizer (or None) and the convolutions it feeds."""

    name: str
    activation: str | None
    convs: list[str]
    macs: int = 0  # multiply-adds of `convs` per image at the traced size: what turns float with it


@dataclass
class LayerScore:
    name: str
    convs: list[str]
    miou: float  # with this layer alone kept in float
    gain: float  # miou - full INT8 miou
    per_class_iou: dict[str, float | None]
    macs: int | None = None  # Layer.macs at the measured size (None: a file from before it was recorded)


@dataclass
class Sensitivity:
    """What `sensitivity()` measured (mIoU in percent, on `images` images)."""

    images: int
    float_miou: float
    int8_miou: float
    float_per_class: dict[str, float | None]
    int8_per_class: dict[str, float | None]
    layers: list[LayerScore]  # ranked: most mIoU recovered first
    cumulative: list[dict[str, Any]] = field(default_factory=list)  # {"k", "miou", "per_class_iou", "layers"}
    seconds: float = 0.0
    output_stride: int | None = None  # the stride measured at (None: the checkpoint's, files before it was recorded)
    max_class_drop: float | None = None  # the per-class limit the curve's order was chosen for (None: mIoU order)
    checkpoint: str | None = None  # the checkpoint measured (checkpoint_sensitivity), so a ranking
    checkpoint_sha256: str | None = None  # is never applied to another one (edgeseg export --sensitivity)
    # The layers' scores when they were measured on other images than the curve (fewer images, or a
    # file reused): {"images", "float_miou", "int8_miou", "float_per_class", "int8_per_class",
    # "source"}; None: on the same images as the curve, whose reference is the fields above.
    ranking: dict[str, Any] | None = None
    macs: int | None = None  # the model's conv multiply-adds per image at the measured size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layers_of(model: torch.nn.Module, example: torch.Tensor) -> list[Layer]:
    """The model's switchable layers, found by one forward pass (which conv reads which quantizer)."""
    if not is_quantized(model):
        raise CheckpointError("sensitivity needs an INT8 checkpoint (qat.pt or one from 'edgeseg calibrate'), not an FP32 one")
    made: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept, so no id is reused
    reads: dict[str, str | None] = {}
    macs: dict[str, int] = {}
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def source(x: torch.Tensor) -> str | None:
        hit = made.get(id(x))
        return hit[0] if hit is not None and hit[1] is x else None

    for m in model.modules():
        if isinstance(m, TensorQuantizer):
            hooks.append(m.register_forward_hook(lambda mod, _i, out: made.__setitem__(id(out), (names[mod], out))))
        elif isinstance(m, QuantConv2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp: reads.__setitem__(names[mod], source(inp[0]))))
            hooks.append(m.register_forward_hook(lambda mod, _i, out: macs.__setitem__(names[mod], conv_macs(mod, out))))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    layers = {name: Layer(name, name, []) for name in dict.fromkeys(names[m] for m in model.modules() if isinstance(m, TensorQuantizer))}
    for conv, source in reads.items():
        if source is None:
            layers[conv] = Layer(conv, None, [conv])
        else:
            layers[source].convs.append(conv)
    for layer in layers.values():
        layer.macs = sum(macs[c] for c in layer.convs)
    return list(layers.values())


def conv_macs(conv: torch.nn.Conv2d, out: torch.Tensor) -> int:
    """Multiply-adds of one image through `conv`, from its output's spatial size."""
    kh, kw = conv.kernel_size
    return int(out.shape[-2] * out.shape[-1] * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw)


def keep_float(model: torch.nn.Module, layers: list[Layer], base: list[str] | None = None) -> None:
    """Mark `layers` float in the model's quantization state, on top of `base` (the quantizers
    already float: those calibration never reached), and switch the rest to INT8."""
    from edgeseg.quant import set_quant_enabled

    disabled = [n for layer in layers for n in ([layer.activation] if layer.activation else []) + layer.convs]
    model.edgeseg_quant["disabled"] = sorted(set(disabled) | set(base or []))  # type: ignore[index, operator]
    set_quant_enabled(model, True)


def _score(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], names: list[str], ignore: int) -> tuple[float, dict]:
    cm = ConfusionMatrix(len(names), ignore)
    with torch.no_grad():
        for x, y in batches:
            logits = model(x).float()
            if logits.shape[-2:] != y.shape[-2:]:
                logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            for pred, mask in zip(logits.argmax(1), y):
                cm.update(pred, mask)
    s = cm.summary(names)
    return s["miou"], s["per_class_iou"]


def batched(samples: list[tuple[torch.Tensor, torch.Tensor]], batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`samples` (image, mask) stacked in batches of same-size images."""
    out = []
    for i in range(0, len(samples), batch):
        group = samples[i : i + batch]
        if all(g[0].shape == group[0][0].shape and g[1].shape == group[0][1].shape for g in group):
            out.append((torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])))
        else:
            out += [(g[0][None], g[1][None]) for g in group]
    return out


def _reference(ranking: Sensitivity) -> dict[str, Any]:
    """The FP32/INT8 figures the layer scores of `ranking` were measured against."""
    if ranking.ranking is not None:
        return dict(ranking.ranking)
    keys = ("images", "float_miou", "int8_miou", "float_per_class", "int8_per_class")
    return {k: getattr(ranking, k) for k in keys} | {"source": None}


def sensitivity(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    names: list[str],
    ignore_index: int,
    *,
    cumulative: int = 10,
    max_class_drop: float | None = None,
    curve_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ranking: Sensitivity | None = None,
    ranking_source: str | None = None,
    progress: Progress | None = None,
) -> Sensitivity:
    """Score every layer kept in float alone on `batches`, rank them, then keep the 1..`cumulative`
    best together (in curve_order: by mIoU recovered, or first by what they fix of `max_class_drop`),
    measured on `curve_batches` (default: `batches`). With `ranking`, its layer scores are reused
    (no pass per layer) and only the reference and the curve are measured."""
    from edgeseg.quant import set_quant_enabled

    start = time.perf_counter()
    model.eval()
    state = model.edgeseg_quant  # type: ignore[attr-defined]
    saved = list(state.get("disabled", []))
    layers = layers_of(model, batches[0][0][:1])
    by_name = {layer.name: layer for layer in layers}
    if ranking is not None:
        unknown = [s.name for s in ranking.layers if s.name not in by_name]
        if unknown:
            raise CheckpointError(f"the ranking lists '{unknown[0]}', which is not a layer of this model; measure the ranking again")
    separate = curve_batches is not None or ranking is not None
    curve_batches = curve_batches if curve_batches is not None else batches
    n_curve = min(cumulative, len(layers))
    total = (0 if ranking is not None else len(layers) + 2) + (2 if separate else 0) + n_curve
    step = [0]

    def tick() -> None:
        step[0] += 1
        if progress:
            progress(step[0], total)

    def reference(on: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        set_quant_enabled(model, False)
        float_miou, float_pc = _score(model, on, names, ignore_index)
        tick()
        keep_float(model, [], saved)
        int8_miou, int8_pc = _score(model, on, names, ignore_index)
        tick()
        images = len([y for _, ys in on for y in ys])
        return {"images": images, "float_miou": float_miou, "int8_miou": int8_miou, "float_per_class": float_pc, "int8_per_class": int8_pc}

    try:
        if ranking is not None:  # its scores, with this model's costs (a file may predate them)
            scores = [replace(s, macs=by_name[s.name].macs) for s in ranking.layers]
            ranked = _reference(ranking) | {"source": ranking_source}
        else:
            ranked = reference(batches) | {"source": None}
            scores = []
            for layer in layers:
                keep_float(model, [layer], saved)
                miou, pc = _score(model, batches, names, ignore_index)
                scores.append(LayerScore(layer.name, layer.convs, miou, miou - ranked["int8_miou"], pc, layer.macs))
                tick()
            scores.sort(key=lambda s: -s.gain)
        ref = reference(curve_batches) if separate else ranked
        total_macs = sum(layer.macs for layer in layers)
        order = curve_order(scores, ranked["float_per_class"], max_class_drop, int8_pc=ranked["int8_per_class"], total_macs=total_macs)
        curve = []
        for k in range(1, n_curve + 1):
            chosen = [by_name[name] for name in order[:k]]
            keep_float(model, chosen, saved)
            miou, pc = _score(model, curve_batches, names, ignore_index)
            curve.append({"k": k, "miou": miou, "per_class_iou": pc, "layers": [layer.name for layer in chosen]})
            tick()
    finally:
        state["disabled"] = saved
        set_quant_enabled(model, True)
    return Sensitivity(
        ref["images"],
        ref["float_miou"],
        ref["int8_miou"],
        ref["float_per_class"],
        ref["int8_per_class"],
        scores,
        curve,
        time.perf_counter() - start,
        max_class_drop=max_class_drop,
        ranking=ranked if separate else None,
        macs=total_macs,
    )


def check_points(value: Any, flag: str, unit: str) -> None:
    """A limit in mIoU/IoU points (--max-drop, --max-class-drop): None, or a finite number in 0..100."""
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 100
    if value is not None and bad:
        raise ConfigError(f"{flag} {value} is out of range; use {unit} in 0..100")


def class_excess(float_pc: dict[str, float | None], pc: dict[str, float | None] | None, max_class_drop: float) -> float:
    """IoU points over `max_class_drop`, summed over the classes (those scored in both), that `pc`
    loses against `float_pc`; inf when `pc` is unknown (a curve point of a file without classes)."""
    if pc is None:
        return float("inf")
    return sum(max(0.0, f - q - max_class_drop) for c, f in float_pc.items() if f is not None and (q := pc.get(c)) is not None)


def curve_order(
    scores: list[LayerScore],
    float_pc: dict[str, float | None],
    max_class_drop: float | None,
    *,
    int8_pc: dict[str, float | None] | None = None,
    total_macs: int | None = None,
) -> list[str]:
    """The order the cumulative curve keeps layers float in: `scores` as ranked (mIoU recovered),
    or with a class limit, most class_excess removed (against full INT8, `int8_pc`) per share of
    `total_macs` kept float (at least FREE_SHARE) first, then those removing none; without costs or
    `int8_pc`, least class_excess first. Stable: ties keep the mIoU rank."""
    if max_class_drop is None:
        return [s.name for s in scores]
    if int8_pc is None or not total_macs or any(s.macs is None for s in scores):
        return [s.name for s in sorted(scores, key=lambda s: class_excess(float_pc, s.per_class_iou, max_class_drop))]
    base = class_excess(float_pc, int8_pc, max_class_drop)

    def key(s: LayerScore) -> tuple[int, float]:
        removed = base - class_excess(float_pc, s.per_class_iou, max_class_drop)
        share = max((s.macs or 0) / total_macs, FREE_SHARE)
        return (0, -removed / share) if removed > 0 else (1, 0.0)

    return [s.name for s in sorted(scores, key=key)]


def layers_for_drop(result: Sensitivity, max_drop: float, max_class_drop: float | None = None) -> list[str]:
    """The fewest layers (from the cumulative curve) that bring INT8 within `max_drop` mIoU of float
    and, with `max_class_drop`, every class within that many IoU points of float.

    Raises ConfigError when even the whole curve does not reach it.
    """

    def within(miou: float, pc: dict[str, float | None] | None) -> bool:
        classes_ok = max_class_drop is None or class_excess(result.float_per_class, pc, max_class_drop) == 0.0
        return result.float_miou - miou <= max_drop and classes_ok

    if within(result.int8_miou, result.int8_per_class):
        return []
    for point in result.cumulative:
        if within(point["miou"], point.get("per_class_iou")):
            return list(point["layers"])
    what = f"a drop of {max_drop} mIoU" + (f" with no class losing more than {max_class_drop} IoU" if max_class_drop is not None else "")
    best = max(result.cumulative, key=lambda p: p["miou"], default=None)
    reached = "" if best is None else f" (keeping {best['k']} layers in float gives {result.float_miou - best['miou']:.2f} mIoU)"
    raise ConfigError(
        f"no layer set within the measured {len(result.cumulative)} reaches {what}{reached}; "
        "raise --max-drop/--max-class-drop, use QAT, or measure a longer curve"
    )


def checkpoint_sensitivity(
    ckpt: Any,
    *,
    data: str | None = None,
    fmt: str | None = None,
    split: str | None = None,
    images: int = 24,
    cumulative: int = 10,
    output_stride: int | None = None,
    max_class_drop: float | None = None,
    curve_images: int | None = None,
    ranking: str | Path | None = None,
    progress: Progress | None = None,
) -> Sensitivity:
    """sensitivity() of an INT8 checkpoint (PTQ or QAT) on the first `images` of its val split, at
    `output_stride` (default: the checkpoint's); the curve on the first `curve_images` (default:
    `images`); with `ranking`, the layer scores of that file (same checkpoint and stride) instead
    of measuring them."""
    from edgeseg.data.dataset import eval_dataset
    from edgeseg.train.checkpoint import checkpoint_recipe, file_hash, load_checkpoint, model_from_checkpoint

    # Every value and the ranking file are checked before the checkpoint is read.
    if not 1 <= cumulative <= 1000:
        raise ConfigError(f"--cumulative {cumulative} is out of range; use 1..1000")
    if not 1 <= images <= MAX_IMAGES:
        raise ConfigError(f"--images {images} is out of range; use 1..{MAX_IMAGES}")
    if output_stride is not None:
        from edgeseg.constants import check_output_stride

        check_output_stride(output_stride, "--output-stride")
    check_points(max_class_drop, "--max-class-drop", "IoU points")
    ranked = read_sensitivity(ranking) if ranking is not None else None
    if ranked is not None and curve_images is None:
        curve_images = images  # the curve on --images, the ranking as measured
    least = _reference(ranked)["images"] if ranked is not None else images
    if curve_images is not None and not least <= curve_images <= MAX_IMAGES:
        what = "the ranking's images" if ranked is not None else "--images, which ranks the layers"
        raise ConfigError(f"--curve-images {curve_images} is out of range; use {least}..{MAX_IMAGES} (at least {what})")
    c = load_checkpoint(ckpt)
    if not c.get("quant"):
        raise CheckpointError(
            f"'{ckpt}' is an FP32 checkpoint; sensitivity needs an INT8 one: run 'edgeseg calibrate {ckpt} ...' (PTQ) or use qat.pt"
        )
    model = model_from_checkpoint(c, output_stride)
    stride = int(model.output_stride)
    sha = file_hash(ckpt)
    if ranked is not None:
        fix = f"measure one with 'edgeseg sensitivity {ckpt} --output-stride {stride} --json FILE'"
        if ranked.checkpoint_sha256 != sha:
            raise ConfigError(f"--ranking '{ranking}' was measured on another checkpoint ({ranked.checkpoint or 'not recorded'}); {fix}")
        measured_at = ranked.output_stride or int(c["arch"]["output_stride"])  # None: the checkpoint's (older files)
        if measured_at != stride:
            raise ConfigError(f"--ranking '{ranking}' was measured at OS{measured_at}, this curve at OS{stride}; {fix}")
    ds = eval_dataset(checkpoint_recipe(c), split, data, fmt)
    # Each image is read and preprocessed once: the ranking's are the first of the curve's.
    samples = [ds[i] for i in range(min(max(images, curve_images or 0), len(ds)))]
    batches = batched(samples[: images if ranked is None else 1])  # with a ranking, only the layer trace needs an image
    curve_batches = batched(samples[:curve_images]) if curve_images is not None and (ranked is not None or curve_images != images) else None
    classes = list(ds.classes.names)
    result = sensitivity(
        model,
        batches,
        classes,
        ds.classes.ignore_index,
        cumulative=cumulative,
        max_class_drop=max_class_drop,
        curve_batches=curve_batches,
        ranking=ranked,
        ranking_source=str(ranking) if ranking is not None else None,
        progress=progress,
    )
    result.checkpoint, result.checkpoint_sha256 = str(ckpt), sha
    result.output_stride = stride
    return result


def read_sensitivity(path: str | Path) -> Sensitivity:
    """Read and validate a file written by `edgeseg sensitivity --json` (untrusted input).

    Raises:
        CheckpointError: no such file, not JSON, or a field out of range (one line, with the fix).
    """
    from edgeseg.schemas import validate_sensitivity

    path = Path(path)
    fix = f"write it again with 'edgeseg sensitivity CKPT --json {path.name}'"
    if not path.is_file():
        raise CheckpointError(f"sensitivity file '{path}' does not exist; {fix}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise CheckpointError(f"'{path}' is {path.stat().st_size >> 20} MiB, far more than a sensitivity file; {fix}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON ({type(exc).__name__}); {fix}") from None
    d = validate_sensitivity(data, f"'{path}'", fix)
    layers = [LayerScore(s["name"], list(s["convs"]), s["miou"], s["gain"], dict(s["per_class_iou"]), s.get("macs")) for s in d["layers"]]
    fields = ("images", "float_miou", "int8_miou", "float_per_class", "int8_per_class", "cumulative", "seconds")
    keep = {k: d[k] for k in (*fields, "output_stride", "max_class_drop", "ranking", "macs")}
    return Sensitivity(**keep, layers=layers, checkpoint=d.get("checkpoint"), checkpoint_sha256=d.get("checkpoint_sha256"))
