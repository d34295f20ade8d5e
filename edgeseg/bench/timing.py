"""Timing a loaded runner: the model call alone, full-load throughput, and device-side parts.

The timed call is the model alone. A runner that converts its input to the runtime's own type
(Core ML: PIL images) splits `run` into `prepare` + `run_prepared`; the conversion runs before
each timed call, is timed by itself and counted as pre-processing. A runner that times its parts
on the device (TensorRT: CUDA events around the copies and the engine) leaves them in
`last_times` after each call; they are read after the timed call, outside it.

Throughput is images per second of the timed synchronous calls, one after another, unless the
runtime runs several requests in parallel (OpenVINO with the throughput hint): then it is
measured separately, at full load (`run_full_load`), over as many inferences as there are timed
runs, while the latency percentiles still come from single synchronous calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeseg.bench.memory import PeakMemory
from edgeseg.bench.stats import latency_stats, percentile, throughput
from edgeseg.export.base import Loaded

DEVICE_PARTS = ("h2d", "engine", "d2h")  # the keys of a runner's `last_times`


@dataclass
class Timing:
    """What measuring one loaded artifact found; a row is assembled from it."""

    loaded: Loaded
    samples_ms: list[float]
    first_inference_s: float
    peak_mem_mb: float | None
    first_output: np.ndarray
    load_s: float | None = None
    peak_rss_mb: float | None = None
    round_p50_ms: list[float] | None = None
    memory: PeakMemory | None = None
    prepare_ms: list[float] = field(default_factory=list)  # per timed call: conversion to the runtime's input type
    device_ms: list[dict[str, float]] = field(default_factory=list)  # per timed call: the runner's last_times
    full_load_runs: int = 0  # inferences timed at full load (0: throughput from the synchronous calls)
    full_load_s: float = 0.0

    def close_memory(self) -> None:
        """Read the memory peaks of the section that began at load (once)."""
        if self.memory is not None:
            self.peak_mem_mb, self.peak_rss_mb = self.memory.peak_mb(), self.memory.absolute_peak_mb()
            self.memory = None


def timed_runs(timing: Timing, x: np.ndarray, warmup: int, runs: int, tick: Callable[[], None] | None = None) -> list[float]:
    """`warmup` untimed calls, then `runs` timed calls of the model on `x`.

    Appends to timing.samples_ms (and its prepare/device times) and returns this call's samples.
    """
    runner: Any = timing.loaded.runner
    prepare, run_prepared = getattr(runner, "prepare", None), getattr(runner, "run_prepared", None)
    split = callable(prepare) and callable(run_prepared)
    for _ in range(warmup):
        runner.run(x)
        if tick:
            tick()
    samples = []
    for _ in range(runs):
        if split:
            t0 = time.perf_counter_ns()
            prepared = prepare(x)  # type: ignore[misc]
            start = time.perf_counter_ns()
            run_prepared(prepared)  # type: ignore[misc]
            samples.append((time.perf_counter_ns() - start) / 1e6)
            timing.prepare_ms.append((start - t0) / 1e6)
        else:
            start = time.perf_counter_ns()
            runner.run(x)
            samples.append((time.perf_counter_ns() - start) / 1e6)
        parts = getattr(runner, "last_times", None)
        if parts:
            timing.device_ms.append(dict(parts))
        if tick:
            tick()
    timing.samples_ms += samples
    return samples


def at_full_load(loaded: Loaded) -> bool:
    """Whether the runner measures throughput with its parallel requests (OpenVINO's throughput hint)."""
    runner: Any = loaded.runner
    return getattr(runner, "perf_hint", None) == "throughput" and callable(getattr(runner, "run_full_load", None))


def full_load_runs(timing: Timing, x: np.ndarray, runs: int) -> None:
    """Time `runs` inferences with every parallel request of the runner busy (after one untimed
    inference per request); nothing for a runner without full load."""
    if not at_full_load(timing.loaded):
        return
    runner: Any = timing.loaded.runner
    runner.run_full_load(x, int(getattr(runner, "infer_requests", None) or 1))
    timing.full_load_s += float(runner.run_full_load(x, runs))
    timing.full_load_runs += runs


def timing_fields(timing: Timing, batch: int) -> dict[str, Any]:
    """The row fields measured here beyond the latency: throughput (at full load where measured),
    the performance hint and parallel requests, and the device-side engine and copy times."""
    runner: Any = timing.loaded.runner
    full = timing.full_load_runs > 0
    fps = batch * timing.full_load_runs / timing.full_load_s if full and timing.full_load_s > 0 else throughput(timing.samples_ms, batch)
    out: dict[str, Any] = {
        "throughput": round(fps, 3),
        "perf_hint": getattr(runner, "perf_hint", None),
        "infer_requests": int(getattr(runner, "infer_requests", None) or 1) if full else None,
        "engine_latency": None,
        "copy_ms": None,
    }
    if timing.device_ms and all("engine" in d for d in timing.device_ms):
        out["engine_latency"] = {k: round(v, 4) for k, v in latency_stats([d["engine"] for d in timing.device_ms]).items()}
        copies = {k: [d[k] for d in timing.device_ms if k in d] for k in ("h2d", "d2h")}
        out["copy_ms"] = {k: round(percentile(v, 50), 4) for k, v in copies.items() if len(v) == len(timing.device_ms)} or None
    return out


def timing_notes(timing: Timing) -> list[str]:
    """What a reader of the row needs to know about how it was timed."""
    notes = []
    if timing.full_load_runs:
        requests = getattr(timing.loaded.runner, "infer_requests", None)
        notes.append(f"throughput at full load ({requests} parallel requests); latency from single synchronous calls")
    if timing.prepare_ms:
        notes.append(f"pre-processing includes the conversion to the runtime's input ({float(np.mean(timing.prepare_ms)):.3f} ms a call)")
    return notes
