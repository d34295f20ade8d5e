"""Parameters and GMACs of a model at each output stride."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from edgeseg.constants import OUTPUT_STRIDES
from edgeseg.models import build_model


def gmacs(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """Multiply-accumulates (x1e9) of one forward at `size` (FLOPs counted by torch / 2)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 2e9


def stride_costs(*, num_classes: int, width_mult: float, head: str, size: tuple[int, int]) -> list[dict[str, Any]]:
    """One row per output stride: head, output_stride, input ("HxW"), params and gmacs at `size`."""
    rows = []
    for os_ in OUTPUT_STRIDES:
        model = build_model(num_classes=num_classes, output_stride=os_, width_mult=width_mult, head=head)
        rows.append(
            {
                "head": head,
                "output_stride": os_,
                "input": f"{size[0]}x{size[1]}",
                "params": sum(p.numel() for p in model.parameters()),
                "gmacs": gmacs(model, size),
            }
        )
    return rows
