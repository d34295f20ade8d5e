"""A run folder belongs to one recipe and one process at a time.

`run.json` records the recipe hash a folder was started with and whether the run finished; a
different recipe (or `--resume` of a finished run) is refused with what to do instead. A lock
file keeps a second `edgeseg train` out of a busy folder; the lock is the operating system's
(fcntl/msvcrt through filelock), so a killed process never leaves a stale lock behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeseg.config import Recipe
from edgeseg.errors import ConfigError
from edgeseg.fsutil import write_json

RUN_FILE = "run.json"
LOCK_FILE = ".edgeseg.lock"


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s lock for the block (rank 0 of a data-parallel run only); a busy folder is an error."""
    if not _is_rank_zero():
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK_FILE))
    owner = out / (LOCK_FILE + ".pid")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        pid = owner.read_text().strip() if owner.is_file() else "unknown"
        raise ConfigError(f"run folder '{out}' is in use by another edgeseg (pid {pid}); wait for it to end or use --out NEW") from None
    try:
        owner.write_text(f"{os.getpid()}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _recorded(out: Path) -> dict[str, Any] | None:
    """What the folder says of its run: run.json, else the recipe hash of an older run's last.pt."""
    path = out / RUN_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(f"'{path}' is damaged; delete it (the checkpoints are kept) or use --out NEW") from None
        if isinstance(data, dict) and isinstance(data.get("recipe_hash"), str):
            return data
        raise ConfigError(f"'{path}' is damaged; delete it (the checkpoints are kept) or use --out NEW")
    if (out / "last.pt").is_file():
        from edgeseg.train.checkpoint import load_checkpoint

        return {"recipe_hash": load_checkpoint(out / "last.pt").get("recipe_hash"), "finished": (out / "summary.json").is_file()}
    return None


def claim_run_folder(out: Path, recipe: Recipe, *, resume: bool, force: bool) -> None:
    """Check that `out` may hold this run, then record it as this recipe's (unfinished) run.

    Raises:
        ConfigError: the folder holds another recipe's run (without --force), or --resume of a
            run that already finished.
    """
    if not _is_rank_zero():
        return
    have = _recorded(out)
    want = recipe.hash()
    if have is not None and not force:
        if have.get("recipe_hash") != want:
            raise ConfigError(
                f"run folder '{out}' holds a run of another recipe (hash {have.get('recipe_hash')}, this one {want}); "
                "use --out NEW, or --force to train this recipe there"
            )
        if resume and have.get("finished"):
            raise ConfigError(
                f"the run in '{out}' already finished (see {out / 'summary.json'}); nothing to resume: use --out NEW to train again"
            )
    if not resume or have is not None:  # a --resume with nothing to resume fails later, leaving no mark
        write_json(out / RUN_FILE, {"recipe_hash": want, "recipe_name": recipe.name, "finished": False})


def finish_run_folder(out: Path, recipe: Recipe) -> None:
    """Record that the run in `out` finished."""
    if _is_rank_zero():
        write_json(out / RUN_FILE, {"recipe_hash": recipe.hash(), "recipe_name": recipe.name, "finished": True})


def run_finished(out: Path, recipe: Recipe) -> bool:
    """Whether `out` holds a finished run of this recipe."""
    path = out / RUN_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("recipe_hash") == recipe.hash() and data.get("finished") is True
