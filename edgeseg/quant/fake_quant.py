"""Symmetric INT8 fake quantization: the two functions, the activation quantizer, the quant conv.

Scheme (the one TensorRT requires and OpenVINO and CoreML accept): weights per output channel
(axis 0), activations per tensor, zero point 0, scale = amax / 127, values clamped to
[-128, 127]. The ONNX exporters reject the narrow [-127, 127] range, so the full int8 range is
used with the symmetric scale. Both functions are `torch.fake_quantize_per_*_affine`, which
export to ONNX QuantizeLinear/DequantizeLinear and have straight-through gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

QMIN, QMAX = -128, 127
# Smallest amax: a tensor that is all zeros still gets a valid (positive) scale.
AMAX_EPS = 1e-6
MODES = ("calib", "quant", "off")


def int8_scale(amax: torch.Tensor) -> torch.Tensor:
    """The one INT8 scale rule: max(amax, AMAX_EPS) / 127 (symmetric, zero point 0).

    Every path that quantizes (fake quantization, the ONNX Q/DQ, Core ML's quantize ops) uses it.
    """
    return amax.detach().float().clamp_min(AMAX_EPS) / QMAX


def fake_quant_tensor(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric INT8 fake quantization: clamp(round(x / s), -128, 127) * s, s = amax / 127.

    Args:
        x: any float tensor (computed in float32, returned in x's dtype).
        amax: scalar tensor, the range.
    """
    scale = int8_scale(amax).reshape(())
    zero = torch.zeros((), dtype=torch.int32, device=x.device)
    out = torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, QMIN, QMAX)
    return out.to(x.dtype)


def fake_quant_channel(w: torch.Tensor, amax: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Per-channel symmetric INT8 fake quantization along `axis` (one amax per channel)."""
    scale = int8_scale(amax)
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=w.device)
    out = torch.fake_quantize_per_channel_affine(w.float(), scale, zero, axis, QMIN, QMAX)
    return out.to(w.dtype)


class TensorQuantizer(nn.Module):
    """Per-tensor activation quantizer with its range in the buffer `amax`.

    Modes: "quant" fake-quantizes with `amax`; "calib" passes the tensor through unchanged and
    feeds it to `calibrator`; "off" passes through. With `track` set (QAT before its ranges are
    frozen), each training forward moves `amax` towards the batch's max |x| by an exponential
    moving average, as torch.ao's QAT observers do.
    """

    def __init__(self, amax: float = float("nan")) -> None:
        super().__init__()
        self.register_buffer("amax", torch.tensor(float(amax)))
        self.mode = "quant"
        self.track = False
        self.momentum = 0.01
        self.calibrator: Any = None

    def extra_repr(self) -> str:
        return f"amax={float(self.amax):.5g}, mode={self.mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "calib":
            if self.calibrator is not None:
                self.calibrator.collect(x)
            return x
        if self.track and self.training:
            with torch.no_grad():
                batch = x.detach().abs().amax().float()
                self.amax.lerp_(batch, self.momentum)
        return fake_quant_tensor(x, self.amax)


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weight is fake-quantized per output channel, its range the current max |w|.

    The range is recomputed from the weights at every forward (so QAT updates move it), and the
    ONNX exporter folds it into a constant scale. `quant_weight=False` runs the float conv.
    """

    quant_weight: bool = True

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> QuantConv2d:
        """A QuantConv2d with the same hyper-parameters, sharing `conv`'s parameters."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,  # type: ignore[arg-type]
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def weight_amax(self) -> torch.Tensor:
        """Per-output-channel max |w| (shape [out_channels])."""
        return self.weight.detach().abs().amax(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quant_channel(self.weight, self.weight_amax(), 0) if self.quant_weight else self.weight
        return self._conv_forward(x, weight, self.bias)
