"""Small building blocks shared by the backbone, ASPP and decoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class QuantPoint(nn.Identity):
    """Marks a tensor that an INT8 model quantizes (the input of a conv or a residual add).

    It is an identity in the float model; `edgeseg.quant.quantize` swaps it for a fake quantizer.
    Putting the points in the model code, once per tensor, gives the placement TensorRT's
    explicit-quantization rules ask for: one scale per tensor, shared by all its consumers.
    """


class ConvNormAct(nn.Sequential):
    """Conv2d + BatchNorm + ReLU6/ReLU (torchvision's Conv2dNormActivation names: 0, 1, 2).

    With `quant_out`, a QuantPoint follows the activation (index 3, no parameters), so state
    dicts stay compatible with torchvision.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: type[nn.Module] = nn.ReLU6,
        quant_out: bool = False,
    ) -> None:
        pad = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            act(inplace=True),
        ]
        if quant_out:
            layers.append(QuantPoint())
        super().__init__(*layers)
        self.out_channels = out_ch


class SeparableConv(nn.Sequential):
    """Depthwise (possibly dilated) 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1, quant_out: bool = True) -> None:
        super().__init__(
            ConvNormAct(in_ch, in_ch, 3, dilation=dilation, groups=in_ch, act=nn.ReLU, quant_out=True),
            ConvNormAct(in_ch, out_ch, 1, act=nn.ReLU, quant_out=quant_out),
        )

    def set_dilation(self, dilation: int) -> None:
        conv = self[0][0]
        conv.dilation = (dilation, dilation)
        conv.padding = (dilation, dilation)


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to a size; exported as one ONNX Resize."""
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def down(size: int, stride: int) -> int:
    """Spatial size after `stride` worth of stride-2 convs with 'same' padding (ceil division)."""
    while stride > 1:
        size = (size + 1) // 2
        stride //= 2
    return size
