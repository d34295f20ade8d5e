"""Interleaved benching: every artifact loaded at once, then timed in rounds, one after another.

On a shared machine (a laptop, a CI runner, a device running other work) the load drifts over
minutes. Timing artifact A for a minute and then B compares A's minute with B's; timing both in
turn, round after round, exposes both to the same drift, so their ratio holds even when the
absolute figures move. Each row keeps the p50 of every round (`round_p50_ms`): their spread is
the noise the report shows next to the figure. A runner with full-load throughput (OpenVINO's
throughput hint) is also timed at full load in every round, right after its synchronous calls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path

from edgeseg.bench.measure import BenchOptions, Progress, finish_row, load_timed, open_with, preflight
from edgeseg.bench.results import BenchRow, save_results
from edgeseg.bench.runners import check_options_apply
from edgeseg.bench.stats import percentile
from edgeseg.bench.timing import at_full_load, full_load_runs, timed_runs
from edgeseg.errors import ConfigError

log = logging.getLogger(__name__)

MAX_ROUNDS = 100


def bench_interleaved(
    json_path: str | Path,
    paths: list[Path],
    options: BenchOptions | list[BenchOptions],
    rounds: int,
    progress: Callable[[Path], Progress | None] | None = None,
) -> list[BenchRow]:
    """Bench `paths` interleaved in `rounds` rounds and append their rows to the results file.

    Each round times ceil(runs / rounds) calls of every artifact after ceil(warmup / rounds)
    untimed ones, the artifacts' order rotating from round to round. Memory peaks are those of
    each artifact's load and first run (the others are resident during the timed runs).

    Args:
        json_path: results file (created, or merged into).
        paths: artifact folders and/or `.pt` checkpoints (two or more to be worth interleaving).
        options: shared by every path, or one per path (the pipeline runs its checkpoints at
            several output strides; benchmarks run one artifact with several OpenVINO
            performance hints); `runs` is the total per artifact.
        rounds: 2..MAX_ROUNDS.
        progress: progress(path) returns the progress callback for that path.
    """
    per_path = options if isinstance(options, list) else [options] * len(paths)
    if len(per_path) != len(paths):
        raise ValueError("one BenchOptions per path")
    if not 2 <= rounds <= MAX_ROUNDS:
        raise ConfigError(f"--rounds {rounds} is out of range; use 2..{MAX_ROUNDS} (or 1 to bench one artifact after another)")
    runs, warmup = per_path[0].runs, per_path[0].warmup
    if rounds > runs:
        raise ConfigError(f"--rounds {rounds} is more than --runs {runs}; every round needs a timed run: lower --rounds")
    targets = [t for path, opts in zip(paths, per_path) for t in preflight(json_path, [path], opts, whole_command=False)]
    for opts in {id(o): o for o in per_path}.values():
        check_options_apply(targets, opts.target_options())
    per_round, warm = math.ceil(runs / rounds), math.ceil(warmup / rounds)
    loaded = []
    for path, opts in zip(paths, per_path):
        opts = dataclasses.replace(opts, runs=per_round * rounds)
        art = open_with(path, opts)
        callback = progress(path) if progress else None
        timing, x = load_timed(art, opts)
        timing.close_memory()
        timing.round_p50_ms = []
        loaded.append((art, timing, x, callback, opts))
    for r in range(rounds):
        shift = r % len(loaded)
        for _, timing, x, callback, _ in loaded[shift:] + loaded[:shift]:
            samples = timed_runs(timing, x, warm, per_round)
            timing.round_p50_ms.append(percentile(samples, 50))  # type: ignore[union-attr]
            if at_full_load(timing.loaded):
                full_load_runs(timing, x, per_round)
            if callback:
                callback("latency", r + 1, rounds)
        log.info("round %d/%d done", r + 1, rounds)
    rows = []
    note = f"interleaved with {len(loaded) - 1} other artifact(s) in {rounds} rounds; memory peaks of load + first run"
    for art, timing, _, callback, opts in loaded:
        row = finish_row(art, opts, timing, callback)
        row.notes = "; ".join(n for n in (row.notes, note) if n)
        row.row_id = row.compute_id()
        save_results(json_path, [row])
        rows.append(row)
    return rows
