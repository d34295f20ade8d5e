"""`edgeseg pipeline`: train FP32 -> QAT (or calibrate) -> export every target at each output
stride -> bench what runs here -> report, resuming from what already exists in the run folder.

A stage is skipped when its outputs exist and were made from the same inputs: the training stage
by the recipe hash, the rest by the SHA-256 of the checkpoint or artifact they came from.

An artifact whose export fails does not stop the others: they are still exported, benched and
reported, and the run then ends with an error that names every failed export (exit code 2), so
a script or CI job never takes a partial run for a complete one. A re-run exports only those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeseg.config import Recipe
from edgeseg.constants import check_output_stride
from edgeseg.errors import ConfigError, EdgesegError, TargetError, printable
from edgeseg.export.base import TARGETS, all_targets, get_target
from edgeseg.fsutil import atomic_dir, check_writable, write_json

log = logging.getLogger(__name__)
Event = Callable[[str, str], None]  # (stage, message)


@dataclass(frozen=True)
class Variant:
    """One artifact the pipeline makes per output stride."""

    target: str
    precision: str
    ptq: str | None = None

    @property
    def int8_source(self) -> bool:
        return self.precision == "int8" and self.ptq is None


def variants() -> list[Variant]:
    """Every artifact the pipeline makes per output stride: each target's own variants."""
    return [Variant(t.name, precision, ptq) for t in all_targets() for precision, ptq in t.variants]


def runs_here(target: str) -> tuple[bool, str]:
    """Whether bench can run a target's artifact on this machine (and why not)."""
    return get_target(target).can_run_here()


STAGES = ("train", "calibrate", "report")


def read_state(path: Path) -> dict[str, Any]:
    """pipeline.json: {stage: {key: sha256 or hash string}}; {} when absent.

    The state only lets stages be skipped, so a damaged one is an error that says how to go on
    (every output is re-checked by its hash when the file is deleted).
    """
    if not path.exists():
        return {}
    fix = f"delete '{path}' and run again (finished stages are re-checked by hash, not redone blindly)"
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ConfigError(f"'{path}' is not readable JSON; {fix}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"'{path}' is not a JSON object; {fix}")
    for stage, entry in state.items():
        if stage not in STAGES or not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise ConfigError(f"'{path}' has an unexpected entry {stage[:40]!r}; {fix}")
    return state


class Pipeline:
    """Runs and resumes the stages of one recipe in one run folder."""

    def __init__(
        self,
        recipe: Recipe,
        out: Path,
        *,
        targets: list[str],
        output_strides: list[int],
        event: Event | None = None,
        bench_runs: int | None = None,
        limit: int | None = None,
        rounds: int = 5,
    ) -> None:
        self.recipe, self.out = recipe, check_writable(out)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            from edgeseg.errors import did_you_mean

            raise ConfigError(f"unknown target '{unknown[0]}'{did_you_mean(unknown[0], TARGETS)}; use one of {', '.join(TARGETS)}")
        for stride in output_strides:
            check_output_stride(stride, "--output-strides")
        self.targets, self.strides = targets, output_strides
        self.event = event or (lambda stage, msg: log.info("%s: %s", stage, msg))
        self.bench_runs, self.limit = bench_runs, limit
        if not 1 <= rounds <= 100:
            raise ConfigError(f"--rounds {rounds} is out of range; use 1..100 (1: one artifact after another)")
        self.rounds = rounds
        self.state_path = self.out / "pipeline.json"
        self.state: dict[str, Any] = read_state(self.state_path)
        self.failed: dict[str, str] = {}  # artifact folder name -> why its export failed

    def _save_state(self) -> None:
        write_json(self.state_path, self.state)

    def run(self) -> dict[str, Any]:
        """Run every stage; returns the artifacts, results file and report.

        Raises:
            TargetError: one or more exports failed (after the other artifacts were exported,
                benched and reported); the message names each one.
        """
        start = time.perf_counter()
        int8_ckpt = self.train()
        artifacts = self.export(int8_ckpt)
        results = self.bench(artifacts, int8_ckpt)
        report = self.report(results, artifacts)
        if self.failed:
            self._raise_failed(report)
        self.event("done", f"{time.perf_counter() - start:.0f}s; report: {report}")
        return {"artifacts": [str(a) for a in artifacts], "results": str(results), "report": str(report)}

    def _raise_failed(self, report: Path) -> None:
        names = ", ".join(self.failed)
        first, why = next(iter(self.failed.items()))
        raise TargetError(
            f"{len(self.failed)} export(s) failed: {names} (first, {first}: {printable(why, 300)}); "
            f"the others were exported, benched where they run here, and reported in {report}; fix the cause and run the pipeline again "
            "(finished stages are skipped)"
        )

    def train(self) -> Path:
        """Train (or resume); return the checkpoint INT8 artifacts come from."""
        from edgeseg.train import fit
        from edgeseg.train.checkpoint import file_hash, load_checkpoint
        from edgeseg.train.run_folder import run_finished

        want = self.recipe.hash()
        done = self.state.get("train", {})
        best = self.out / "best.pt"
        if best.exists() and done.get("recipe_hash") == want and done.get("best_sha256") == file_hash(best):
            self.event("train", f"skipped: {best} matches recipe {want}")
        elif best.exists() and run_finished(self.out, self.recipe):
            self.event("train", f"skipped: {best} is the finished run of recipe {want}")
            self.state["train"] = {"recipe_hash": want, "best_sha256": file_hash(best)}
            self._save_state()
        else:
            if best.exists() and done.get("recipe_hash") not in (None, want):
                raise ConfigError(f"'{self.out}' holds a run of another recipe (hash {done.get('recipe_hash')}); use a new --out")
            resume = (self.out / "last.pt").exists()
            self.event("train", "resuming from last.pt" if resume else "FP32" + (" + QAT" if self.recipe.quant.enabled else ""))
            fit(self.recipe, self.out, resume=resume, callback=self._train_callback)
            self.state["train"] = {"recipe_hash": want, "best_sha256": file_hash(best)}
            self._save_state()
        if load_checkpoint(best).get("quant"):
            return best
        return self.calibrate()

    def _train_callback(self, event: str, **info: Any) -> None:
        if event == "eval":
            self.event("train", f"{info['stage']} step {info['it']}: val mIoU {info['miou']:.2f}")

    def calibrate(self) -> Path:
        from edgeseg.train import calibrate_checkpoint
        from edgeseg.train.checkpoint import file_hash

        src, out = self.out / "fp32.pt", self.out / "ptq.pt"
        key = file_hash(src)
        if out.exists() and self.state.get("calibrate", {}).get("source_sha256") == key:
            self.event("calibrate", f"skipped: {out} is from this fp32.pt")
            return out
        summary = calibrate_checkpoint(src, None, out)
        self.state["calibrate"] = {"source_sha256": key}
        self._save_state()
        self.event("calibrate", f"{summary.get('method')} on {summary.get('num_images')} images -> {out}")
        return out

    def export(self, int8_ckpt: Path) -> list[Path]:
        from edgeseg.export.artifacts import artifact_name, export_artifact
        from edgeseg.export.base import ExportRequest
        from edgeseg.train.checkpoint import file_hash

        folders = []
        for os_ in self.strides:
            for v in (v for v in variants() if v.target in self.targets):
                ok, why = get_target(v.target).is_available()
                if not ok:
                    self.event("export", f"{v.target}: skipped ({why})")
                    continue
                ckpt = int8_ckpt if v.int8_source else self.out / "fp32.pt"
                folder = self.out / "export" / artifact_name(v.target, v.precision, os_, v.ptq)
                if self._fresh(folder, file_hash(ckpt)):
                    self.event("export", f"skipped: {folder.name} is up to date")
                    folders.append(folder)
                    continue
                self._forget_rows(folder)  # a re-exported artifact is benched again
                request = ExportRequest(
                    checkpoint=ckpt,
                    precision=v.precision,
                    output_stride=os_,
                    out_dir=self.out / "export",
                    options={"ptq": v.ptq} if v.ptq else {},
                )
                try:
                    result = export_artifact(request, v.target)
                except EdgesegError as exc:
                    # The other artifacts still export; run() ends with an error naming this one.
                    self.failed[folder.name] = str(exc)
                    self.event("export", f"{folder.name}: failed: {exc}")
                    continue
                self.event("export", f"{folder.name}: {result.size_bytes / 1e6:.1f} MB in {result.seconds:.1f}s")
                folders.append(folder)
        return folders

    @staticmethod
    def _fresh(folder: Path, source_sha: str) -> bool:
        """Whether `folder` is a whole artifact (valid meta.json, model file present) of this source."""
        from edgeseg.export.meta import read_meta

        try:
            return read_meta(folder).get("source_checkpoint_sha256") == source_sha
        except EdgesegError:
            return False

    def _forget_rows(self, folder: Path) -> None:
        """Drop the bench rows of an artifact about to be exported again (one row per artifact)."""
        from edgeseg.bench.results import SCHEMA_VERSION, load_results

        results = self.out / "results.json"
        if not results.exists():
            return
        rows = load_results(results)
        keep = [r for r in rows if Path(r.artifact).name != folder.name]
        if len(keep) < len(rows):
            write_json(results, {"schema_version": SCHEMA_VERSION, "rows": [r.to_dict() for r in keep]})

    def _bench_plan(self, artifacts: list[Path], int8_ckpt: Path) -> dict[int, list[tuple[Path, Any]]]:
        """Per output stride: (path, BenchOptions) of every row still to measure here.

        Each stride has the torch FP32 baseline, the QAT weights run in float (what fine-tuning
        did, apart from INT8) when the INT8 source is a QAT checkpoint, and its artifacts.
        """
        from edgeseg.bench.measure import BenchOptions, open_with
        from edgeseg.bench.results import load_results

        results = self.out / "results.json"
        have = {(r.artifact_sha256, r.output_stride, r.target, r.precision) for r in load_results(results)} if results.exists() else set()
        b = self.recipe.bench
        base = BenchOptions(runs=self.bench_runs or b.runs, warmup=b.warmup, threads=b.threads, limit=self.limit)
        todo = [(self.out / "fp32.pt", replace(base, output_stride=s)) for s in self.strides]
        if int8_ckpt.is_file() and open_with(int8_ckpt, base).quant_method == "qat":
            todo += [(int8_ckpt, replace(base, output_stride=s, float_weights=True)) for s in self.strides]
        todo += [(a, base) for a in artifacts]
        plan: dict[int, list[tuple[Path, Any]]] = {}
        for path, options in todo:
            art = open_with(path, options)
            ok, why = runs_here(art.target) if art.target != "torch" else (True, "")
            name = f"{path.name} OS{art.output_stride}{' (float weights)' if options.float_weights else ''}"
            if not ok:
                self.event("bench", f"{path.name}: not run here ({why}); run 'edgeseg bench {path}' on the device")
            elif (art.sha256, art.output_stride, art.target, art.precision) in have:
                self.event("bench", f"skipped: {name} already measured")
            else:
                plan.setdefault(art.output_stride or 0, []).append((path, options))
        return plan

    def bench(self, artifacts: list[Path], int8_ckpt: Path | None = None) -> Path:
        """Bench what runs here, the rows of one output stride interleaved in `rounds` rounds."""
        from edgeseg.bench.interleave import bench_interleaved
        from edgeseg.bench.measure import bench_artifact
        from edgeseg.bench.results import save_results

        results = self.out / "results.json"
        for stride, items in sorted(self._bench_plan(artifacts, int8_ckpt or self.out / "fp32.pt").items()):
            paths, options = [p for p, _ in items], [o for _, o in items]
            rounds = min(self.rounds, options[0].runs)
            if len(items) > 1 and rounds > 1:
                rows = bench_interleaved(results, paths, options, rounds)
            else:
                rows = [bench_artifact(p, o) for p, o in items]
                save_results(results, rows)
            for path, row in zip(paths, rows):
                miou = "-" if row.miou is None else f"{row.miou:.2f}"
                spread = f" (rounds {min(row.round_p50_ms):.2f}-{max(row.round_p50_ms):.2f})" if row.round_p50_ms else ""
                what = f"{path.name}{' float weights' if row.quant_method and row.quant_method.endswith(' weights') else ''}"
                self.event("bench", f"{what} OS{stride}: p50 {row.latency['p50']:.2f} ms{spread}, mIoU {miou}")
        return results

    def report(self, results: Path, artifacts: list[Path] | None = None) -> Path:
        """Write the report folder (atomically: a kill leaves the old report or the new one),
        unless it was written from these very results."""
        from edgeseg.report import build_report
        from edgeseg.train.checkpoint import file_hash

        out = self.out / "report"
        # Relative to the run folder: a copied or moved run folder keeps its report.
        listed = sorted(str(Path(a).relative_to(self.out)) if Path(a).is_relative_to(self.out) else str(a) for a in artifacts or [])
        key = file_hash(results) + (":" + hashlib.sha256("\n".join(listed).encode()).hexdigest()[:16] if listed else "")
        if (out / "report.md").exists() and self.state.get("report", {}).get("results_sha256") == key:
            self.event("report", f"skipped: {out / 'report.md'} is from these results")
            return out / "report.md"

        def build(tmp: Path) -> None:
            build_report([results], tmp, artifacts=artifacts)

        atomic_dir(out, build)
        self.state["report"] = {"results_sha256": key}
        self._save_state()
        self.event("report", f"{out / 'report.md'}")
        return out / "report.md"
