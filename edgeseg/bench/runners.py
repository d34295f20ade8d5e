"""Load an artifact with its own runtime, then `run(x) -> logits`.

Every target's runner lives in its target module (edgeseg.export.<target>), reached through the
table of targets; only the PyTorch eager baseline of a `.pt` checkpoint is loaded here.
"""

from __future__ import annotations

import logging

import numpy as np

from edgeseg.bench.artifact import Artifact
from edgeseg.errors import ConfigError, TargetError, did_you_mean, missing_dependency
from edgeseg.export.base import Loaded, all_targets, get_target

log = logging.getLogger(__name__)


class TorchRunner:
    """PyTorch eager on the CPU from a checkpoint: the baseline row (torch imported here only)."""

    def __init__(self, artifact: Artifact, threads: int | None) -> None:
        try:
            import torch
        except ImportError:
            raise missing_dependency("torch", "train") from None
        from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = model_from_checkpoint(load_checkpoint(artifact.path), artifact.output_stride)
        if artifact.meta.get("float_weights"):
            from edgeseg.quant import set_quant_enabled

            set_quant_enabled(self.model, False)  # the quantized checkpoint's weights, run in float
        self.model.set_input_size(artifact.input_size)
        self.model.eval()
        self.static_batch = None
        self.version = torch.__version__
        self.threads = torch.get_num_threads()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()


def check_hint(hint: str | None, target: str) -> str | None:
    """The execution precision to use for `target`: `hint` where its runtime has precision hints.

    A hint no runtime knows is an error; a hint given for a runtime without hints is ignored (with
    a warning), so one command can bench OpenVINO next to other targets. Rows record the
    precision actually run.
    """
    if hint is None:
        return None
    known = {h: t.name for t in all_targets() for h in t.precision_hints}
    if hint not in known:
        raise ConfigError(f"--precision-hint '{hint}' is not a runtime precision{did_you_mean(hint, known)}; use one of {', '.join(known)}")
    if target == "torch" or hint not in get_target(target).precision_hints:
        log.warning("--precision-hint %s applies to %s only; ignored for a %s artifact", hint, known[hint], target)
        return None
    return hint


# BenchOptions fields a target may take (it lists them in its `bench_options`), with their flags.
TARGET_OPTION_FLAGS = {"device": "--device", "perf_hint": "--hint", "compute_units": "--compute-units"}


def _declared(target: str) -> dict[str, tuple[str, ...]]:
    """The bench options a target takes: field -> accepted values (the torch baseline takes none)."""
    return {} if target == "torch" else dict(getattr(get_target(target), "bench_options", {}))


def canonical_options(given: dict[str, str | None]) -> dict[str, str | None]:
    """Each given value in the spelling its targets declare (case-insensitive): `--device cpu` is
    CPU. A value no target takes is one ConfigError listing the values that exist."""
    out: dict[str, str | None] = {}
    for field, value in given.items():
        if value is None:
            out[field] = None
            continue
        choices = [c for t in all_targets() for c in getattr(t, "bench_options", {}).get(field, ())]
        match = {c.lower(): c for c in choices}.get(str(value).lower())
        if match is None:
            flag = TARGET_OPTION_FLAGS[field]
            raise ConfigError(f"{flag} '{value}' is unknown{did_you_mean(str(value), choices)}; use one of {', '.join(choices)}")
        out[field] = match
    return out


def split_options(target: str, given: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """(the given options `target` takes, the flags of those it does not)."""
    declared = _declared(target)
    takes = {k: v for k, v in given.items() if v is not None and k in declared}
    others = [f"{TARGET_OPTION_FLAGS[k]} {v}" for k, v in given.items() if v is not None and k not in declared]
    return takes, others


def check_options_apply(targets: list[str], given: dict[str, str | None]) -> None:
    """Refuse an option that no artifact of the command takes; one that only some take is ignored
    (with a warning) for the others, as precision hints are, so one command benches a mix."""
    for field, value in given.items():
        if value is None or any(field in _declared(t) for t in targets):
            continue
        owners = [t.runtime_label for t in all_targets() if field in getattr(t, "bench_options", {})]
        kinds = ", ".join(sorted(set(targets)))
        raise ConfigError(
            f"{TARGET_OPTION_FLAGS[field]} {value} applies to {' and '.join(owners)} artifacts only, not to {kinds}; leave it out"
        )


def check_target_options(target: str, given: dict[str, str | None]) -> None:
    """The target's own check of the options it takes (OpenVINO: is the device here?), before any loading."""
    takes, _ = split_options(target, given)
    check = getattr(get_target(target), "check_bench_options", None) if takes else None
    if check is not None:
        check(**takes)


def load_runner(
    artifact: Artifact, *, threads: int | None = None, precision_hint: str | None = None, options: dict[str, str | None] | None = None
) -> Loaded:
    """Load `artifact` with its target's own runtime (a .pt checkpoint: PyTorch eager).

    Args:
        artifact: from open_artifact.
        threads: CPU threads of the runtime (None: its default).
        precision_hint: execution precision for runtimes that have one (OpenVINO: f32, bf16, f16).
        options: BenchOptions.target_options(); each goes to the targets that declare it, and
            is ignored with a warning for the others.
    """
    precision_hint = check_hint(precision_hint, artifact.target)
    takes, ignored = split_options(artifact.target, options or {})
    for flag in ignored:
        log.warning("%s does not apply to a %s artifact; ignored for '%s'", flag, artifact.target, artifact.path)
    if artifact.target == "torch":
        tr = TorchRunner(artifact, threads)
        return Loaded(tr, "torch", tr.version, "CPU (eager)", None, None)
    target = get_target(artifact.target)
    ok, why = target.can_run_here()
    if not ok:
        raise TargetError(f"cannot bench '{artifact.path}' here: {why}")
    return target.load(artifact.path, artifact.meta, threads=threads, precision_hint=precision_hint, **takes)
