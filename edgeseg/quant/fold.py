"""BatchNorm folding: every BatchNorm2d that follows a Conv2d in a Sequential is merged into it.

For eval-mode BN, y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta, which is a conv
with weight w * k and bias (b - mean) * k + beta, k = gamma / sqrt(var + eps) per channel.
Quantization works on the folded weights (what the deployed model multiplies by), so QAT trains
the folded model: BN statistics are frozen from the start of QAT.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (with bias) equal to bn(conv(x)) with BN in eval mode."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,
        conv.groups,
        True,
        conv.padding_mode,  # type: ignore[arg-type]
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        var = bn.running_var.double()  # type: ignore[union-attr]
        mean = bn.running_mean.double()  # type: ignore[union-attr]
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        k = gamma / torch.sqrt(var + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        fused.weight.copy_((conv.weight.double() * k.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_(((bias - mean) * k + beta).to(conv.weight.dtype))  # type: ignore[union-attr]
    return fused


def fold_bn(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold each Conv2d -> BatchNorm2d pair (adjacent in an nn.Sequential).

    The conv becomes a biased Conv2d and the BN an nn.Identity, so module names, indices and
    the forward code stay the same; in eval mode the folded model computes the same function.

    Args:
        model: a float model (left untouched unless `inplace`).
        inplace: fold `model` itself instead of a deep copy.

    Returns:
        The folded model.

    Raises:
        ValueError: a BatchNorm2d that does not directly follow a Conv2d (cannot be folded).
    """
    if not inplace:
        model = copy.deepcopy(model)
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for prev, name in zip(names, names[1:]):
            conv, bn = parent._modules[prev], parent._modules[name]
            if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
                parent._modules[prev] = fold_conv_bn(conv, bn)
                parent._modules[name] = nn.Identity()
    left = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm '{left[0]}' does not follow a Conv2d in a Sequential and cannot be folded")
    return model
