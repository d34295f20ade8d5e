"""Bench: latency, memory and accuracy of artifacts with each target's own runtime (no torch).

`bench_artifact` measures one artifact (or a `.pt` checkpoint, the PyTorch baseline) and returns a
typed `BenchRow`; `save_results` merges rows into a versioned results file that `edgeseg report`
reads.
"""

from edgeseg.bench.interleave import bench_interleaved
from edgeseg.bench.measure import BenchOptions, bench_artifact, bench_into, preflight
from edgeseg.bench.results import SCHEMA_VERSION, BenchRow, ResultsError, load_results, merge_rows, save_results

__all__ = [
    "SCHEMA_VERSION",
    "BenchOptions",
    "BenchRow",
    "ResultsError",
    "bench_artifact",
    "bench_interleaved",
    "bench_into",
    "load_results",
    "merge_rows",
    "preflight",
    "save_results",
]
