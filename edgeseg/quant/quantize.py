"""`quantize(model, cfg, forward_loop)`: the float model -> a calibrated fake-quant INT8 model.

The result is still the same model class (a DeepLab keeps set_output_stride, set_input_size
and the attributes checkpoints read): inside a deep copy, BatchNorm is folded into the convs,
each nn.Conv2d becomes a QuantConv2d and each QuantPoint a TensorQuantizer. `quant_state`
describes that structure for a checkpoint and `restore_quantized` rebuilds it on a fresh float
model, so the saved state dict (with every `amax` buffer) loads strictly.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from edgeseg.constants import CALIB_METHODS, check_calib_method
from edgeseg.errors import CheckpointError
from edgeseg.models.layers import QuantPoint
from edgeseg.quant.calibrators import Calibrator
from edgeseg.quant.fake_quant import QuantConv2d, TensorQuantizer
from edgeseg.quant.fold import fold_bn

log = logging.getLogger(__name__)
QUANT_STATE_VERSION = 1
SCHEME = "int8-symmetric: weights per-channel axis 0, activations per-tensor, zero point 0, scale amax/127"

ForwardLoop = Callable[[nn.Module], None]


def _settings(cfg: Any) -> tuple[str, float]:
    """(method, percentile) from a recipe QuantConfig, a mapping, or None (defaults)."""
    if cfg is None:
        return "percentile", 99.99
    get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
    method = get("calib_method") or get("method") or "percentile"
    percentile = float(get("percentile") or 99.99)
    return check_calib_method(str(method), "calibration method"), percentile


def _swap(model: nn.Module) -> None:
    """Replace every nn.Conv2d by a QuantConv2d and every QuantPoint by a TensorQuantizer, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, QuantPoint):
                parent._modules[name] = TensorQuantizer()
            elif type(child) is nn.Conv2d:
                parent._modules[name] = QuantConv2d.from_conv(child)


def _prepare(model: nn.Module, method: str, percentile: float) -> nn.Module:
    q = copy.deepcopy(model)
    fold_bn(q, inplace=True)
    _swap(q)
    q.edgeseg_quant = {"method": method, "percentile": percentile, "disabled": []}  # type: ignore[assignment]
    return q


def quantizers(model: nn.Module) -> Iterator[tuple[str, TensorQuantizer]]:
    """(name, quantizer) of every activation quantizer, in module order."""
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            yield name, m


def quant_convs(model: nn.Module) -> Iterator[tuple[str, QuantConv2d]]:
    """(name, conv) of every weight-quantized convolution, in module order."""
    for name, m in model.named_modules():
        if isinstance(m, QuantConv2d):
            yield name, m


def is_quantized(model: nn.Module) -> bool:
    """True when `model` came from quantize() or restore_quantized()."""
    return hasattr(model, "edgeseg_quant")


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch all fake quantization on (INT8 simulation) or off (the folded float model)."""
    disabled = set(getattr(model, "edgeseg_quant", {}).get("disabled", []))
    for name, q in quantizers(model):
        q.mode = "quant" if enabled and name not in disabled else "off"
    for name, conv in quant_convs(model):
        conv.quant_weight = enabled and name not in disabled


def set_range_tracking(model: nn.Module, track: bool) -> None:
    """During QAT: let activation ranges follow the data (True) or freeze them (False)."""
    for _, q in quantizers(model):
        q.track = track


@torch.no_grad()
def _collect(model: nn.Module, forward_loop: ForwardLoop, method: str) -> dict[str, Calibrator]:
    """Run `forward_loop(model)` with every quantizer collecting (weights float); returns the calibrators."""
    was_training = model.training
    model.eval()
    set_quant_enabled(model, False)
    for _, q in quantizers(model):
        q.mode, q.calibrator = "calib", Calibrator(method)
    try:
        forward_loop(model)
    finally:
        cals = {}
        for name, q in quantizers(model):
            cals[name], q.calibrator = q.calibrator, None
        set_quant_enabled(model, True)
        model.train(was_training)
    return cals


def set_ranges(model: nn.Module, ranges: Mapping[str, float], method: str, percentile: float = 99.99) -> None:
    """Set every quantizer's `amax` from `ranges`; quantizers not in it stay float (disabled)."""
    disabled = []
    for name, q in quantizers(model):
        if name in ranges:
            q.amax.fill_(max(float(ranges[name]), 1e-6))
        else:
            disabled.append(name)
    info = getattr(model, "edgeseg_quant", {})
    info.update({"method": method, "percentile": percentile, "disabled": disabled})
    model.edgeseg_quant = info  # type: ignore[assignment]
    set_quant_enabled(model, True)
    if disabled:
        log.info("%d quantizers saw no calibration data and stay float: %s", len(disabled), ", ".join(disabled))


def calibrate(model: nn.Module, forward_loop: ForwardLoop, method: str = "percentile", percentile: float = 99.99) -> dict[str, float]:
    """Run `forward_loop(model)` with the quantizers collecting, then set every `amax`.

    Weights stay float during calibration, so every activation range is that of the float model.
    Quantizers that saw no data (a training-only auxiliary head) are switched off and listed in
    `model.edgeseg_quant["disabled"]`. Returns {quantizer name: amax}.
    """
    cals = _collect(model, forward_loop, method)
    ranges = {name: float(cal.compute(percentile)) for name, cal in cals.items() if cal.count}
    set_ranges(model, ranges, method, percentile)
    return ranges


def calibrate_methods(
    model: nn.Module, forward_loop: ForwardLoop, methods: tuple[str, ...] = CALIB_METHODS, percentile: float = 99.99
) -> dict[str, dict[str, float]]:
    """Ranges of several methods from one pass over the data: {method: {quantizer: amax}}.

    The model's own ranges are left as they were; apply one set with set_ranges().
    """
    saved = {name: q.amax.clone() for name, q in quantizers(model)}
    cals = _collect(model, forward_loop, "percentile")  # a histogram serves every method
    for name, q in quantizers(model):
        q.amax.copy_(saved[name])
    return {m: {name: float(cal.compute(percentile, m)) for name, cal in cals.items() if cal.count} for m in methods}


def quantize(model: nn.Module, cfg: Any = None, forward_loop: ForwardLoop | None = None) -> nn.Module:
    """Quantize a float model for INT8 (ModelOpt / NNCF functional style).

    Deep-copies `model`, folds BatchNorm into the convolutions, swaps in the fake quantizers and,
    when `forward_loop` is given, calibrates the activation ranges on the data it feeds.

    Args:
        model: a float model whose quantized tensors are marked with QuantPoint (left unchanged).
        cfg: calibration settings: a recipe QuantConfig (calib_method, percentile), a mapping
            with `method`/`calib_method` and `percentile`, or None (percentile 99.99).
        forward_loop: called once as forward_loop(model) to run calibration batches through
            it (in eval mode, no grad). Without it the ranges are unset (NaN), as after
            restore_quantized before its state dict is loaded.

    Returns:
        The quantized model (same class as `model`) in fake-quant mode, ready for evaluation,
        export or QAT.
    """
    method, percentile = _settings(cfg)
    q = _prepare(model, method, percentile)
    if forward_loop is not None:
        calibrate(q, forward_loop, method, percentile)
    return q


def quant_state(model: nn.Module) -> dict[str, Any]:
    """The structure of a quantized model, stored as ckpt['quant'] next to its state dict."""
    if not is_quantized(model):
        raise CheckpointError("quant_state() needs a model returned by quantize() or restore_quantized()")
    info = model.edgeseg_quant  # type: ignore[attr-defined]
    return {
        "version": QUANT_STATE_VERSION,
        "scheme": SCHEME,
        "method": info["method"],
        "percentile": info["percentile"],
        "disabled": list(info.get("disabled", [])),
        "quantizers": [name for name, _ in quantizers(model)],
        "convs": [name for name, _ in quant_convs(model)],
    }


def restore_quantized(model: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """Rebuild the quantized structure described by `state` on a freshly built float model.

    The returned model's state dict has the same keys as the saved one (ranges are NaN until
    `load_state_dict`).

    Raises:
        CheckpointError: the state is from a newer edgeseg or the model does not match it.
    """
    if int(state.get("version", 0)) > QUANT_STATE_VERSION:
        raise CheckpointError(
            f"quantization state version {state.get('version')} is newer than this edgeseg's {QUANT_STATE_VERSION}: upgrade edgeseg"
        )
    q = _prepare(model, str(state.get("method", "percentile")), float(state.get("percentile", 99.99)))
    names = [name for name, _ in quantizers(q)]
    if names != list(state.get("quantizers", names)):
        diff = sorted(set(names) ^ set(state["quantizers"]))
        raise CheckpointError(
            f"the checkpoint's quantizers do not match this model (first difference: '{diff[0] if diff else 'order'}'); "
            "it was written with another quantizer placement: re-run 'edgeseg calibrate' (PTQ) or "
            "'edgeseg train RECIPE --init FP32.pt' (QAT) from its FP32 checkpoint"
        )
    q.edgeseg_quant["disabled"] = list(state.get("disabled", []))  # type: ignore[index]
    set_quant_enabled(q, True)
    return q


def quant_ranges(model: nn.Module) -> dict[str, float | None]:
    """{quantizer name: amax} of every activation quantizer (None where it stays float)."""
    disabled = set(getattr(model, "edgeseg_quant", {}).get("disabled", []))
    out: dict[str, float | None] = {}
    for name, q in quantizers(model):
        value = float(q.amax)
        out[name] = None if name in disabled or math.isnan(value) else value
    return out


def uncalibrated(model: nn.Module) -> list[str]:
    """Names of enabled quantizers whose range is not set (NaN or not positive)."""
    disabled = set(getattr(model, "edgeseg_quant", {}).get("disabled", []))
    return [name for name, q in quantizers(model) if name not in disabled and not float(q.amax) > 0]
