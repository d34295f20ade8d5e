"""DeepLabV3+ / DeepLabV3 with a MobileNetV2 encoder: encoder -> decoder -> head."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn

from edgeseg.constants import HEADS
from edgeseg.models.backbone import InvertedResidual, MobileNetV2Encoder, load_backbone_weights, torchvision_imagenet_weights
from edgeseg.models.heads import AuxHead, DeepLabV3Head, DeepLabV3PlusDecoder
from edgeseg.models.layers import resize


class DeepLab(nn.Module):
    """Semantic segmentation model; forward() returns logits (N, C, H, W) at input size.

    In training mode with `aux_loss`, forward() returns (logits, aux_logits).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        output_stride: int = 16,
        width_mult: float = 1.0,
        head: str = "deeplabv3plus",
        aux_loss: bool = False,
        multi_grid: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head_name = head
        self.encoder = MobileNetV2Encoder(width_mult, output_stride, multi_grid)
        strides, channels = self.encoder.strides, self.encoder.channels
        self.low_index = max(i for i, s in enumerate(strides) if s == 4)
        self.fine_index = max(i for i, s in enumerate(strides) if s == 2)
        high_ch = channels[-1]
        # deeplabv3plus_dw: the decoder reads the last stride-4 block's depthwise output (144
        # channels at width 1.0, after ReLU6, already quantized in the block) instead of its
        # 24-channel linear projection, as TF DeepLab's MobileNetV2 (layer_4/depthwise_output).
        self.low_hidden = head == "deeplabv3plus_dw"
        if head in ("deeplabv3plus", "deeplabv3plus_s2", "deeplabv3plus_dw"):
            fine_ch = channels[self.fine_index] if head == "deeplabv3plus_s2" else 0
            low_block = cast(InvertedResidual, self.encoder.features[self.low_index])
            low_ch = low_block.hidden_channels if self.low_hidden else channels[self.low_index]
            self.decoder: nn.Module = DeepLabV3PlusDecoder(
                high_ch, low_ch, num_classes, output_stride, fine_ch=fine_ch, low_quantized=self.low_hidden
            )
        elif head == "deeplabv3":
            self.decoder = DeepLabV3Head(high_ch, num_classes, output_stride)
        else:
            raise ValueError(f"unknown head {head!r}; use one of {HEADS}")
        # Aux head on the last block of nominal stride 16 (96 channels at width 1.0).
        self.aux_index = max(i for i, s in enumerate(self.encoder.nominal_strides) if s == 16)
        self.aux = AuxHead(channels[self.aux_index], num_classes) if aux_loss else None
        self.input_size: tuple[int, int] | None = None

    @property
    def output_stride(self) -> int:
        return self.encoder.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Switch the output stride (8/16/32) of a built or trained model; weights are unchanged."""
        self.encoder.set_output_stride(output_stride)
        self.decoder.aspp.set_output_stride(output_stride)

    def set_input_size(self, size: tuple[int, int] | None) -> None:
        """Fix the input size so every resize has a static size (for tracing/export)."""
        self.input_size = (int(size[0]), int(size[1])) if size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out_size = self.input_size or x.shape[-2:]
        if self.low_hidden:
            feats, low = self.encoder.forward_hidden(x, self.low_index)
        else:
            feats = self.encoder(x)
            low = feats[self.low_index]
        logits = resize(self.decoder(feats[-1], low, feats[self.fine_index]), out_size)
        if self.training and self.aux is not None:
            return logits, resize(self.aux(feats[self.aux_index]), out_size)
        return logits


def build_model(
    *,
    num_classes: int,
    output_stride: int = 16,
    width_mult: float = 1.0,
    head: str = "deeplabv3plus",
    aux_loss: bool = False,
    multi_grid: list[int] | None = None,
    backbone_weights: str | Path | None = None,
) -> DeepLab:
    """Build DeepLabV3+ (or DeepLabV3) with a MobileNetV2 encoder.

    Args:
        num_classes: number of output classes.
        output_stride: 8, 16 or 32.
        width_mult: MobileNetV2 width multiplier.
        head: "deeplabv3plus" (ASPP + stride-4 decoder), "deeplabv3plus_s2" (the same, then a
            light stride-2 fusion for thin structures), "deeplabv3plus_dw" (the stride-4 decoder
            reads the block's 144-channel depthwise output, not its 24-channel projection) or
            "deeplabv3" (ASPP only).
        aux_loss: add an auxiliary FCN head on stride-16 features for training.
        multi_grid: dilation multipliers for the last dilated blocks (DeepLab v3), e.g. [1, 2, 4].
        backbone_weights: a local torchvision mobilenet_v2 state dict, or "imagenet" to fetch
            torchvision's weights (online machines only).
    """
    model = DeepLab(
        num_classes=num_classes,
        output_stride=output_stride,
        width_mult=width_mult,
        head=head,
        aux_loss=aux_loss,
        multi_grid=multi_grid,
    )
    if backbone_weights == "imagenet":
        torchvision_imagenet_weights(model.encoder)
    elif backbone_weights:
        load_backbone_weights(model.encoder, backbone_weights)
    return model
