"""INT8 quantization: fake quantization, BN folding, calibration, PTQ (see quantize()).

The layers run one way: train -> quant -> models -> data. quant never imports train: it takes
models and data, and train/ reads and writes the checkpoints (train.ptq for `edgeseg calibrate`,
train.qat for the QAT stage, which fine-tunes the quantized model this package builds).

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

from edgeseg.quant.calibrators import Calibrator
from edgeseg.quant.data import ForwardLoop, Progress, array_loop, file_loop, recipe_forward_loop
from edgeseg.quant.fake_quant import QuantConv2d, TensorQuantizer, fake_quant_channel, fake_quant_tensor, int8_scale
from edgeseg.quant.fold import fold_bn
from edgeseg.quant.ptq import calibrate_recipe, ranges_path, write_ranges
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
    "Calibrator",
    "ForwardLoop",
    "Progress",
    "QuantConv2d",
    "TensorQuantizer",
    "array_loop",
    "calibrate",
    "calibrate_methods",
    "calibrate_recipe",
    "fake_quant_channel",
    "fake_quant_tensor",
    "int8_scale",
    "file_loop",
    "fold_bn",
    "is_quantized",
    "quant_ranges",
    "quant_state",
    "quantize",
    "ranges_path",
    "recipe_forward_loop",
    "restore_quantized",
    "set_quant_enabled",
    "set_ranges",
    "set_range_tracking",
    "uncalibrated",
    "write_ranges",
]
