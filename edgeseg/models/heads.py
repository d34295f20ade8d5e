"""ASPP (with image pooling and atrous separable convs), the DeepLabV3+ decoder, and heads."""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.layers import ConvNormAct, QuantPoint, SeparableConv, resize

BASE_RATES = (6, 12, 18)  # at output stride 16; doubled at 8, halved at 32


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    return tuple(r * 16 // output_stride for r in BASE_RATES)


class ASPP(nn.Module):
    """1x1 branch, three atrous separable branches, image pooling, 1x1 projection + dropout."""

    def __init__(self, in_ch: int, out_ch: int = 256, output_stride: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_q = QuantPoint()
        self.branch1x1 = ConvNormAct(in_ch, out_ch, 1, act=nn.ReLU)
        self.atrous = nn.ModuleList(SeparableConv(in_ch, out_ch, r, quant_out=False) for r in aspp_rates(output_stride))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_q = QuantPoint()
        self.pool_conv = ConvNormAct(in_ch, out_ch, 1, act=nn.ReLU)
        self.cat_q = QuantPoint()
        self.project = ConvNormAct(out_ch * 5, out_ch, 1, act=nn.ReLU)
        self.dropout = nn.Dropout(dropout)

    def set_output_stride(self, output_stride: int) -> None:
        for branch, rate in zip(self.atrous, aspp_rates(output_stride), strict=True):
            branch.set_dilation(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_q(x)
        size = x.shape[-2:]
        # cat_q quantizes every input of the concat with one shared scale (so the concat runs
        # in INT8); the pooled branch is quantized at 1x1, before it is broadcast.
        pooled = self.cat_q(self.pool_conv(self.pool_q(self.pool(x))))
        # The pooled map is 1x1: a bilinear resize is a broadcast; expand exports as a plain
        # Expand, not a Resize, and keeps static shapes for CoreML.
        pooled = pooled.expand(-1, -1, size[0], size[1])
        branches = [self.cat_q(self.branch1x1(x))] + [self.cat_q(b(x)) for b in self.atrous] + [pooled]
        return self.dropout(self.project(torch.cat(branches, dim=1)))


class FineFusion(nn.Module):
    """The stride-2 stage of DeepLabV3PlusDecoder: reduce, upsample, concat with projected skip, fuse."""

    UP, SKIP, OUT = 48, 24, 48

    def __init__(self, in_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.reduce = ConvNormAct(in_ch, self.UP, 1, act=nn.ReLU)
        self.skip_q = QuantPoint()
        self.skip_proj = ConvNormAct(skip_ch, self.SKIP, 1, act=nn.ReLU)
        self.cat_q = QuantPoint()
        self.fuse = SeparableConv(self.UP + self.SKIP, self.OUT)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.skip_proj(self.skip_q(skip))
        x = resize(self.reduce(x), skip.shape[-2:])
        return self.fuse(torch.cat([self.cat_q(x), self.cat_q(skip)], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """Fuses ASPP output (upsampled to stride 4) with stride-4 features projected to 48 channels.

    With `fine_ch` (the channels of a stride-2 feature map), a second, light fusion follows at
    stride 2: the stride-4 result is reduced to 48 channels, upsampled and fused with the stride-2
    features projected to 24, and the classifier runs there. Thin classes (CamVid's poles, 1-3
    pixels wide at 360x480) are below one cell of the stride-4 map; the stride-2 map still sees them.
    """

    def __init__(  # noqa: PLR0913
        self,
        high_ch: int,
        low_ch: int,
        num_classes: int,
        output_stride: int,
        channels: int = 256,
        fine_ch: int = 0,
        low_quantized: bool = False,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(high_ch, channels, output_stride)
        # A low-level input the encoder has quantized already (a depthwise output) gets no second
        # quantizer: one scale per tensor, shared by its consumers.
        self.low_q: nn.Module = nn.Identity() if low_quantized else QuantPoint()
        self.low_proj = ConvNormAct(low_ch, 48, 1, act=nn.ReLU)
        self.cat_q = QuantPoint()
        self.fuse = nn.Sequential(SeparableConv(channels + 48, channels), SeparableConv(channels, channels))
        self.fine: FineFusion | None = FineFusion(channels, fine_ch) if fine_ch else None
        self.classifier = nn.Conv2d(FineFusion.OUT if fine_ch else channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor, fine: torch.Tensor | None = None) -> torch.Tensor:
        x = self.aspp(high)
        low = self.low_proj(self.low_q(low))
        x = resize(x, low.shape[-2:])
        # Both concat inputs share one quantizer (one scale), as TensorRT and OpenVINO need to
        # run the concat in INT8.
        x = self.fuse(torch.cat([self.cat_q(x), self.cat_q(low)], dim=1))
        if self.fine is not None:
            if fine is None:
                raise ValueError("this decoder fuses stride-2 features: pass them as `fine`")
            x = self.fine(x, fine)
        return self.classifier(x)


class DeepLabV3Head(nn.Module):
    """ASPP, a 3x3 conv and the classifier on the last feature map (torchvision's DeepLabHead)."""

    def __init__(self, high_ch: int, num_classes: int, output_stride: int, channels: int = 256) -> None:
        super().__init__()
        self.aspp = ASPP(high_ch, channels, output_stride)
        self.head_q = QuantPoint()
        self.conv = ConvNormAct(channels, channels, 3, act=nn.ReLU, quant_out=True)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor, fine: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.conv(self.head_q(self.aspp(high))))


class AuxHead(nn.Module):
    """FCN-style auxiliary head on the stride-16 features (training only)."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.in_q = QuantPoint()
        self.conv = ConvNormAct(in_ch, 128, 3, act=nn.ReLU, quant_out=True)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(128, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(self.in_q(x))))
