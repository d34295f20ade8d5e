"""The report's answer to "which model do I ship?": picks under latency budgets, per device.

A budget is compared with the end-to-end latency of a call (pre-processing + the model's p50 +
post-processing), the figure a frame deadline sees; rows without pre/post figures use the model's
p50 alone and say so. Every row on the device competes: output stride, precision, target and
runtime.
"""

from __future__ import annotations

import math

from edgeseg.errors import ConfigError
from edgeseg.report.analysis import Entry, group_by

DEFAULT_BUDGETS_MS = (20.0, 40.0, 80.0)
NEAR_BEST_MIOU = 0.5  # "as good as the best" at one output stride: within this many mIoU points


def check_budgets(budgets: list[float]) -> list[float]:
    """Budgets in ms, sorted and unique; each must be a finite positive number."""
    for b in budgets:
        if not (math.isfinite(b) and 0 < b <= 1e6):
            raise ConfigError(f"--budget {b} is not a latency; give milliseconds above 0, e.g. --budget 33")
    return sorted(set(budgets))


def latency_ms(e: Entry) -> tuple[float, bool]:
    """(latency compared with a budget, whether it is end to end)."""
    e2e = e.end_to_end_ms
    return (e2e, True) if e2e is not None else (e.row.latency["p50"], False)


def _name(e: Entry, stride: bool = True) -> str:
    ms, e2e = latency_ms(e)
    head = f"OS{e.row.output_stride} {e.label}" if stride else e.label
    return f"{head} ({e.row.miou:.2f} mIoU, {ms:.1f} ms{'' if e2e else ' model only'})"


def budget_lines(entries: list[Entry], budgets: list[float], device: str | None = None) -> dict[str, list[str]]:
    """Per device (or only `device`): the most accurate row within each budget.

    Ties in mIoU go to the faster row.
    """
    out: dict[str, list[str]] = {}
    scored = [e for e in entries if e.row.miou is not None and (device is None or e.device == device)]
    for dev, group in group_by(scored, lambda e: e.device).items():
        lines = []
        for budget in budgets:
            fits = [e for e in group if latency_ms(e)[0] <= budget]
            if not fits:
                fastest = min(group, key=lambda e: latency_ms(e)[0])
                lines.append(f"≤ {budget:g} ms: nothing fits; the fastest is {_name(fastest)}")
                continue
            best = max(fits, key=lambda e: (e.row.miou, -latency_ms(e)[0]))
            lines.append(f"≤ {budget:g} ms: {_name(best)}")
        out[dev] = lines
    return out


def stride_lines(entries: list[Entry]) -> dict[str, list[str]]:
    """Per device and output stride: the fastest row within NEAR_BEST_MIOU of that stride's best."""
    out: dict[str, list[str]] = {}
    scored = [e for e in entries if e.row.miou is not None]
    for dev, group in group_by(scored, lambda e: e.device).items():
        lines = []
        for stride, rows in sorted(group_by(group, lambda e: e.row.output_stride).items(), key=lambda kv: kv[0] or 0):
            top = max(e.row.miou for e in rows)  # type: ignore[type-var]
            near = [e for e in rows if e.row.miou >= top - NEAR_BEST_MIOU]  # type: ignore[operator]
            pick = min(near, key=lambda e: latency_ms(e)[0])
            lines.append(f"OS{stride}: {_name(pick, stride=False)}, within {NEAR_BEST_MIOU} mIoU of the stride's best ({top:.2f})")
        out[dev] = lines
    return out


def resolve_device(device: str, entries: list[Entry]) -> str:
    """The device label `device` names: the label itself or a unique case-insensitive part of it."""
    devices = sorted({e.device for e in entries})
    if device in devices:
        return device
    hits = [d for d in devices if device.lower() in d.lower()]
    if len(hits) == 1:
        return hits[0]
    why = "matches several devices" if hits else "has no rows"
    raise ConfigError(f"--device '{device}' {why}; the results hold: {'; '.join(devices)}")
