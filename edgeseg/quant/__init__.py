"""INT8 quantization: fake quantization, BN folding, calibration, QAT (see quantize()).

Library choice: a small fake-quant module on `torch.fake_quantize_per_channel_affine` /
`torch.fake_quantize_per_tensor_affine`. Both export to standard ONNX QuantizeLinear /
DequantizeLinear (int8 zero points, per-channel axis 0 for weights), have straight-through
gradients for QAT, and matched onnxruntime's INT8 kernels. Not used, measured on torch 2.14:
`torch.ao.quantization` (deprecated; its QAT graph fails to export), torchao pt2e (asymmetric
quantizers by default, its real INT8 drifted 3% from its own simulation), NNCF's torch backend
(exports non-standard FakeQuantize ops), NVIDIA ModelOpt (undeclared dependencies, fails the
default exporter).

Scheme: weights symmetric per output channel, activations symmetric per tensor, zero point 0,
scale amax/127, clamp [-128, 127]; BatchNorm folded first. Which tensors are quantized is
decided by the model code (edgeseg.models.layers.QuantPoint), following TensorRT's
explicit-quantization placement.
"""

from edgeseg.quant.calibrators import METHODS, Calibrator
from edgeseg.quant.fake_quant import QuantConv2d, TensorQuantizer, fake_quant_channel, fake_quant_tensor
from edgeseg.quant.fold import fold_bn
from edgeseg.quant.quantize import (
    calibrate,
    calibrate_methods,
    is_quantized,
    quant_ranges,
    quant_state,
    quantize,
    restore_quantized,
    set_quant_enabled,
    set_range_tracking,
    set_ranges,
    uncalibrated,
)

__all__ = [
    "METHODS",
    "Calibrator",
    "QuantConv2d",
    "TensorQuantizer",
    "calibrate",
    "calibrate_methods",
    "fake_quant_channel",
    "fake_quant_tensor",
    "fold_bn",
    "is_quantized",
    "quant_ranges",
    "quant_state",
    "quantize",
    "restore_quantized",
    "set_quant_enabled",
    "set_ranges",
    "set_range_tracking",
    "uncalibrated",
]
