"""edgeseg.bench.timing on stand-in runners and a stand-in clock: what is inside the timed call,
what is counted as pre-processing, and how device-side and full-load figures reach a row.

The clock advances only when a stand-in runner says so, so every figure has an exact expected
value and no test depends on how fast this machine is.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeseg.bench import BenchOptions, BenchRow
from edgeseg.bench import measure as M
from edgeseg.bench import timing as T
from edgeseg.bench.artifact import Artifact
from edgeseg.bench.results import ResultsError
from edgeseg.export.base import Loaded

PREPARE_MS, MODEL_MS = 5.0, 2.0


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def advance(self, ms: float) -> None:
        self.ns += int(ms * 1e6)


class SplitRunner:
    """Converts its input (PREPARE_MS), then predicts (MODEL_MS), like Core ML; reports device
    parts like TensorRT (the engine time grows by 1 ms a call)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[str] = []
        self.last_times: dict[str, float] = {}

    def prepare(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        self.calls.append("prepare")
        self.clock.advance(PREPARE_MS)
        return ("images", x)

    def run_prepared(self, prepared: tuple[str, np.ndarray]) -> np.ndarray:
        assert prepared[0] == "images"
        self.calls.append("predict")
        self.clock.advance(MODEL_MS)
        n = sum(c == "predict" for c in self.calls)
        self.last_times = {"h2d": 0.25, "engine": float(n), "d2h": 0.5}
        return np.zeros((prepared[1].shape[0], 3, 8, 8), np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls.append("run")
        return self.run_prepared(self.prepare(x))


class QueueRunner:
    """A runner at full load, like OpenVINO with the throughput hint: `count` inferences take count/4 ms."""

    perf_hint, infer_requests = "throughput", 4

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.full_load_calls: list[int] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.clock.advance(MODEL_MS)
        return np.zeros((1, 3, 8, 8), np.float32)

    def run_full_load(self, x: np.ndarray, count: int) -> float:
        self.full_load_calls.append(count)
        return count * MODEL_MS / self.infer_requests / 1000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(T, "time", types.SimpleNamespace(perf_counter_ns=c.perf_counter_ns))
    return c


def _timing(runner: Any) -> T.Timing:
    return T.Timing(Loaded(runner, "coreml", "9.0", "Core ML (all compute units)"), [], 0.1, None, np.zeros((3, 8, 8), np.float32))


def test_conversion_is_outside_the_timed_call(clock: Clock) -> None:
    runner = SplitRunner(clock)
    timing = _timing(runner)
    samples = T.timed_runs(timing, np.zeros((2, 3, 8, 8), np.float32), warmup=2, runs=3)
    assert samples == timing.samples_ms == [MODEL_MS] * 3  # the model alone
    assert timing.prepare_ms == [PREPARE_MS] * 3  # the conversion, timed by itself
    assert runner.calls == ["run", "prepare", "predict"] * 2 + ["prepare", "predict"] * 3  # warm-up through run
    assert timing.device_ms == [{"h2d": 0.25, "engine": e, "d2h": 0.5} for e in (3.0, 4.0, 5.0)]  # timed calls only


def test_device_parts_and_pre_processing_reach_the_row(clock: Clock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner = SplitRunner(clock)
    timing = _timing(runner)
    T.timed_runs(timing, np.zeros((2, 3, 8, 8), np.float32), warmup=0, runs=3)
    monkeypatch.setattr(M, "_time_pre_post", lambda *a, **k: (1.0, 0.5))  # per image: normalisation, argmax
    art = Artifact(tmp_path, "coreml", "int8", {"classes": {"names": ["a", "b", "c"]}}, (8, 8), 16, 0.1, "0" * 64)
    row = M.finish_row(art, BenchOptions(runs=3, batch=2, accuracy=False), timing)
    assert row.preprocess_ms == pytest.approx(1.0 + PREPARE_MS / 2)  # + the conversion, per image
    assert row.latency["p50"] == MODEL_MS and row.throughput == pytest.approx(2 / (MODEL_MS / 1000))
    assert row.engine_latency is not None and (row.engine_latency["p50"], row.engine_latency["max"]) == (2.0, 3.0)
    assert row.copy_ms == {"h2d": 0.25, "d2h": 0.5}
    assert (row.perf_hint, row.infer_requests) == (None, None) and "conversion to the runtime's input (5.000 ms" in row.notes
    assert BenchRow.from_dict(row.to_dict()) == row


def test_full_load_throughput_replaces_the_synchronous_one(clock: Clock) -> None:
    runner = QueueRunner(clock)
    timing = _timing(runner)
    T.timed_runs(timing, np.zeros((1, 3, 8, 8), np.float32), warmup=1, runs=8)
    assert T.at_full_load(timing.loaded)
    T.full_load_runs(timing, np.zeros((1, 3, 8, 8), np.float32), 8)
    assert runner.full_load_calls == [4, 8]  # one untimed inference per request, then the timed ones
    fields = T.timing_fields(timing, batch=1)
    assert fields["throughput"] == pytest.approx(8 / (8 * MODEL_MS / 4 / 1000))  # 4x the synchronous 500/s
    assert (fields["perf_hint"], fields["infer_requests"], fields["engine_latency"]) == ("throughput", 4, None)
    runner.perf_hint = "latency"  # the same runner under the latency hint: no full load, synchronous throughput
    latency = _timing(runner)
    T.timed_runs(latency, np.zeros((1, 3, 8, 8), np.float32), warmup=0, runs=2)
    T.full_load_runs(latency, np.zeros((1, 3, 8, 8), np.float32), 2)
    assert runner.full_load_calls == [4, 8] and T.timing_fields(latency, 1)["throughput"] == pytest.approx(500.0)
    assert T.timing_fields(latency, 1)["infer_requests"] is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("infer_requests", 0), ("infer_requests", True), ("perf_hint", 3), ("engine_latency", {"p50": -1.0}), ("copy_ms", {})],
)
def test_new_row_fields_are_checked(clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: Any) -> None:
    timing = _timing(QueueRunner(clock))
    T.timed_runs(timing, np.zeros((1, 3, 8, 8), np.float32), warmup=0, runs=2)
    monkeypatch.setattr(M, "_time_pre_post", lambda *a, **k: (1.0, 0.5))
    art = Artifact(tmp_path, "openvino", "int8", {"classes": {"names": ["a", "b", "c"]}}, (8, 8), 16, 0.1, "0" * 64)
    d = M.finish_row(art, BenchOptions(runs=2, accuracy=False), timing).to_dict()
    old = {k: v for k, v in d.items() if k not in ("perf_hint", "infer_requests", "engine_latency", "copy_ms")}
    assert BenchRow.from_dict(old).perf_hint is None  # rows written before these fields still load
    with pytest.raises(ResultsError, match=f"field '{key}' = .* must be null or"):
        BenchRow.from_dict({**d, key: value})
