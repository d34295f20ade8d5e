"""MobileNetV2 with torchvision's parameter names and a settable output stride.

The output stride (8, 16 or 32) turns the later strides into dilation, as in DeepLab v3; the
weights do not change, so a trained model can be switched afterwards with `set_output_stride`.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn

from edgeseg.constants import OUTPUT_STRIDES, choices
from edgeseg.errors import CheckpointError
from edgeseg.models.layers import ConvNormAct, QuantPoint

# (expand ratio t, channels c, repeats n, first stride s): the MobileNetV2 paper's table 2.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class InvertedResidual(nn.Module):
    """MobileNetV2 block. `in_q` quantizes the block input once for the conv and the residual.

    In a residual block `out_q` quantizes the conv branch too, so both inputs of the Add are
    quantized: TensorRT and OpenVINO then fuse the Add into the projection conv (an INT8 sum
    post-op) instead of running it as a separate layer.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand))
        self.use_res = stride == 1 and in_ch == out_ch
        self.stride = stride
        self.in_q = QuantPoint()
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(in_ch, hidden, 1, quant_out=True))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, quant_out=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        if self.use_res:
            self.out_q = QuantPoint()
        self.out_channels = out_ch

    @property
    def depthwise(self) -> nn.Conv2d:
        return cast(nn.Conv2d, cast(nn.Sequential, self.conv[-3])[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_q(x)
        return x + self.out_q(self.conv(x)) if self.use_res else self.conv(x)

    def forward_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(x) and the depthwise conv's output (expanded channels, quantized once)."""
        x = self.in_q(x)
        hidden = x
        for layer in list(self.conv)[:-2]:
            hidden = layer(hidden)
        out = self.conv[-1](self.conv[-2](hidden))
        return (x + self.out_q(out) if self.use_res else out), hidden

    @property
    def hidden_channels(self) -> int:
        return self.depthwise.out_channels


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 features 0..17 (the 1280-channel head is not used for segmentation).

    forward() returns one feature map per block; `channels[i]` and `strides[i]` describe them, so
    heads pick features by stride, never by list index.
    """

    def __init__(self, width_mult: float = 1.0, output_stride: int = 16, multi_grid: list[int] | None = None) -> None:
        super().__init__()
        self.input_q = QuantPoint()
        first = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvNormAct(3, first, 3, stride=2)]
        self.nominal_strides = [2]
        in_ch, stride_so_far = first, 2
        for t, c, n, s in _SETTINGS:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append(InvertedResidual(in_ch, out_ch, stride, t))
                stride_so_far *= stride
                self.nominal_strides.append(stride_so_far)
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.channels = [m.out_channels for m in layers]
        self.multi_grid = list(multi_grid) if multi_grid else None
        # Checkpoints written before the a trous fix dilated the block whose stride was removed;
        # model_from_checkpoint sets this for them (arch without "atrous": "exact").
        self.legacy_dilation = False
        self.strides: list[int] = []
        self.output_stride = 0
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Replace strides beyond `output_stride` with dilation (same weights).

        The a trous rule of DeepLab: a block whose stride is removed keeps the dilation it had,
        and every later conv is dilated by the stride removed, so the dilated network computes the
        strided network's features densely (sampled every `stride` pixels they are equal). Multi-grid
        multiplies the dilation of the last `len(multi_grid)` blocks.
        """
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output stride must be {choices(OUTPUT_STRIDES)}, got {output_stride}")
        n = len(self.features)
        grid = {n - len(self.multi_grid) + j: m for j, m in enumerate(self.multi_grid)} if self.multi_grid else {}
        current, dilation = 2, 1
        self.strides = [2]
        for idx in range(1, n):
            block = cast(InvertedResidual, self.features[idx])
            stride, rate = block.stride, dilation
            if stride > 1 and current * stride > output_stride:
                dilation *= stride
                stride = 1
                if self.legacy_dilation:
                    rate = dilation
            current *= stride
            rate *= grid.get(idx, 1)
            dw = block.depthwise
            dw.stride = (stride, stride)
            dw.dilation = (rate, rate)
            dw.padding = (rate, rate)
            self.strides.append(current)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._run(x, tap=None)[0]

    def forward_hidden(self, x: torch.Tensor, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """forward(x) and the depthwise output of block `index` (1..17: a block, not the stem)."""
        if not 1 <= index < len(self.features):
            raise ValueError(f"block index must be 1..{len(self.features) - 1}, got {index}")
        feats, hidden = self._run(x, tap=index)
        return feats, cast(torch.Tensor, hidden)

    def _run(self, x: torch.Tensor, tap: int | None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Every block's output, and block `tap`'s depthwise output (None without a tap)."""
        x = self.input_q(x)
        feats: list[torch.Tensor] = []
        hidden = None
        for i, layer in enumerate(self.features):
            if i == tap:
                x, hidden = cast(InvertedResidual, layer).forward_hidden(x)
            else:
                x = layer(x)
            feats.append(x)
        return feats, hidden


def load_backbone_weights(encoder: MobileNetV2Encoder, path: str | Path) -> None:
    """Load a torchvision `mobilenet_v2` state dict (local file) strictly into the encoder.

    The 1280-channel conv and the classifier are dropped; every encoder tensor must be present
    with the same shape, otherwise a CheckpointError names the first mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"backbone weights '{path}' not found; pass a torchvision mobilenet_v2 state dict "
            "(e.g. ../shared/weights/mobilenet_v2_imagenet.pth) with model.backbone_weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"backbone weights '{path}' cannot be read as a state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = encoder.state_dict()
    n_layers = len(encoder.features)
    picked = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and int(parts[1]) < n_layers:
            picked[key] = value
    missing = [k for k in own if k not in picked]
    if missing:
        raise CheckpointError(
            f"backbone weights '{path}' lack '{missing[0]}' ({len(missing)} missing); "
            "pass a torchvision mobilenet_v2 state dict with width_mult 1.0"
        )
    for key, value in picked.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"backbone weights '{path}': '{key}' has shape {tuple(value.shape)}, the model "
                f"needs {tuple(own[key].shape)}; use model.width_mult 1.0 with these weights"
            )
    encoder.load_state_dict(picked, strict=True)


def torchvision_imagenet_weights(encoder: MobileNetV2Encoder) -> None:
    """Load torchvision's ImageNet weights from its hub cache (online machines only)."""
    try:
        from torchvision.models import MobileNet_V2_Weights

        state = MobileNet_V2_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline errors come in many types
        raise CheckpointError(
            f"cannot download torchvision ImageNet weights ({type(exc).__name__}); this machine is "
            "offline: pass a local state dict with model.backbone_weights=PATH"
        ) from None
    own = encoder.state_dict()
    encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
