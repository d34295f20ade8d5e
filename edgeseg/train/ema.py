"""Exponential moving average of a model's weights (`train.ema`).

The average is what is evaluated, saved as the stage's checkpoint, exported and fine-tuned by
QAT; the live weights keep training. The decay warms up as min(decay, (1 + n) / (10 + n)), so a
short run is not dominated by its random start.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """An EMA copy of `model`: parameters and float buffers averaged, integer buffers copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live weights of `model` (same architecture) into the average."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        mine = [p for p in self.module.parameters()]
        theirs = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(mine, theirs, weight)
        for avg, live in zip(self.module.buffers(), model.buffers()):
            if avg.dtype.is_floating_point:
                avg.lerp_(live, weight)
            else:
                avg.copy_(live)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
