"""Rows for artifacts that were exported but not measured in these results (yet).

A Jetson bundle or a Core ML package is exported on the workstation and measured on the device;
until that device's results file is merged, the report lists each such artifact with the
command that measures it. A row matches an artifact by its folder name, target, precision and
output stride, so results measured from a copy of the folder on the device fill it in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeseg.bench.results import BenchRow
from edgeseg.errors import EdgesegError
from edgeseg.report.render import Block

log = logging.getLogger(__name__)


def _measured(meta: dict, folder: Path, rows: list[BenchRow]) -> bool:
    return any(
        Path(r.artifact).name == folder.name
        and r.target == meta["target"]
        and r.precision == meta["precision"]
        and r.output_stride == meta["output_stride"]
        for r in rows
    )


def pending_lines(rows: list[BenchRow], artifacts: list[Path]) -> list[Block]:
    """A "Not measured here" section for the artifacts without a row (nothing when all have one)."""
    from edgeseg.export.base import get_target
    from edgeseg.export.meta import read_meta

    lines = []
    for folder in artifacts:
        try:
            meta = read_meta(folder)
        except EdgesegError as exc:
            log.warning("report: %s is not listed (%s)", folder, exc)
            continue
        if _measured(meta, folder, rows):
            continue
        runtime = get_target(meta["target"]).runtime_label
        lines.append(
            f"OS{meta['output_stride']} {meta['precision'].upper()} {runtime} ({folder.name}): not measured here; "
            f"on a device with {runtime}: `edgeseg bench {folder.name} --json results.json`, then pass that file to `edgeseg report` too"
        )
    return [("h2", "Not measured here"), ("ul", lines)] if lines else []
