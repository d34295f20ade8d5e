"""Numerical guards of the training loop: undo a non-finite step whole, and fingerprint weights.

A step whose loss or gradients are not finite must leave no trace: the optimizer update is
skipped by the loop, and the buffers its forward already moved (BatchNorm statistics, quantizer
ranges) are put back from a snapshot taken before it.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


class Buffers:
    """A model's buffers (BatchNorm statistics, quantizer ranges) as they were before a step's
    forward, so that a step found non-finite is undone whole. One fused copy a step."""

    def __init__(self, model: nn.Module) -> None:
        self.live = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.live]

    def save(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    def restore(self) -> None:
        if self.live:
            with torch.no_grad():
                torch._foreach_copy_(self.live, self.saved)


def non_finite(loss: torch.Tensor, model: nn.Module | None) -> str:
    """'' when the loss and every gradient (of `model`, when given) are finite, else what is not."""
    if not torch.isfinite(loss):
        return f"loss is {loss.item()}"
    if model is None:
        return ""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
        return "a gradient is not finite"
    return ""


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters (names and exact bytes, layout independent)."""
    h = hashlib.sha256()
    for name, p in sorted(getattr(model, "module", model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
