"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

Temporary names carry the writer's process id (`.NAME.<pid>-<host>.XXXX.tmp`), so the next write
of the same file or folder removes what a killed writer left behind, and never what a live one
is still writing. Folders are swapped in with one atomic exchange (renameat2 on Linux), so a
reader sees the old folder or the new one and never a moment without either.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from edgeseg.errors import EdgesegError, printable

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


class WriteError(EdgesegError):
    """An output file or folder could not be written."""


def _explain(path: Path, exc: OSError) -> WriteError:
    if exc.errno == errno.ENOSPC:
        return WriteError(f"disk full while writing '{path}'; free space and run again (the old file is untouched)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(f"cannot write '{path}' ({exc.strerror}); choose a writable --out folder")
    return WriteError(f"cannot write '{path}' ({exc.strerror or exc}); check the path and free space")


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-{_HOST}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{6})\.[^.]+\.tmp$")


def _remove_stale(folder: Path, name: str | None) -> list[Path]:
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or (name is not None and m["name"] != name):
            continue
        if m["host"] != _HOST or _pid_alive(int(m["pid"])):
            continue  # a live writer's, or another host's (whose processes we cannot see)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary siblings of `path` left by writers of this host that no longer run.

    Returns the removed paths. Temporaries of live processes and of other hosts are kept.
    """
    path = Path(path)
    return _remove_stale(path.parent, path.name)


def sweep_stale_temps(folder: str | Path) -> list[Path]:
    """Delete every temporary in `folder` left by a killed writer of this host (any name)."""
    return _remove_stale(Path(folder), None)


@contextlib.contextmanager
def scratch_dir(near: str | Path) -> Iterator[Path]:
    """A scratch folder inside `near`, deleted on exit, for files no one else should see.

    Named like the other temporaries (`.scratch.<pid>-<host>.<random>.tmp`), so what a killed
    process leaves is removed by the next scratch_dir in `near` (or by sweep_stale_temps), and
    inside an atomic_dir build it goes away with the build's own temporary folder. The system
    temporary folder, where nothing ever cleans up after a SIGKILL, is not used.
    """
    folder = Path(near)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder / "scratch")
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(folder / "scratch"), suffix=".tmp", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it (os.umask would, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path, default: int) -> int:
    """Keep the mode of the file being replaced; a new file gets the usual `default & ~umask`
    (mkstemp/mkdtemp make private 0600/0700 files, unreadable by the rest of a team)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return default & ~_umask()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (power loss); not supported everywhere, so best effort."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on success it replaces `path` atomically.

    Args:
        path: the file to write.
        mode: a write mode of open(): "wb" or "w".

    Raises:
        WriteError: the folder cannot be written or the disk is full, or `path` is a file or a
            folder of someone else's files (it is never replaced); `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _mode_for(path, 0o666))
    except OSError as exc:
        raise _explain(path, exc) from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _explain(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON (with a final newline) to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_text(path: str | Path, text: str) -> None:
    """Append `text` to a small file (a log, a CSV) by rewriting it atomically: a crash leaves the
    file with or without the new lines, never with half a line."""
    path = Path(path)
    try:
        old = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise _explain(path, exc) from None
    write_bytes(path, old + text.encode())


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy `src` to `dst` atomically (the copy is complete and fsynced before it takes the name)."""
    src = Path(src)
    with atomic_open(dst, "wb") as out, open(src, "rb") as fh:
        shutil.copyfileobj(fh, out, 1 << 20)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux"):
            at_fdcwd, rename_exchange = -100, 2
            rc = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
        elif sys.platform == "darwin":
            rename_swap = 2
            rc = libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap)
        else:
            return False
    except (AttributeError, OSError):  # libc without renameat2 (glibc < 2.28, musl < 1.2)
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the finished folder `tmp` at `path`; the old folder, if any, is deleted afterwards."""
    old = path.parent / f".{path.name}.old"
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old folder
    else:
        # Between these renames `path` is missing; recover_dir puts the old folder back.
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def _fsync_tree(folder: Path) -> None:
    """fsync every file an SDK wrote into `folder` (they rarely do), so the swap is durable."""
    for file in (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


OWNED_MARK = ".edgeseg-folder"
# What folders written by earlier edgeseg versions hold (before the mark existed).
_OWNED_BEFORE_MARK = ("meta.json", "report.md")
_NAMES_SHOWN = 3  # of a user's files, in the message that refuses to replace their folder


def _check_replaceable(path: Path) -> None:
    """A folder atomic_dir may replace whole: absent, empty, or one edgeseg wrote; never a user's."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise WriteError(f"'{path}' exists and is not a folder edgeseg wrote; move it away or choose another --out")
    names = {p.name for p in path.iterdir()}
    if names and OWNED_MARK not in names and not names & set(_OWNED_BEFORE_MARK):
        shown = sorted(names)[:_NAMES_SHOWN]
        more = ", ..." if len(names) > len(shown) else ""
        listing = ", ".join(printable(n, 40) for n in shown) + more
        raise WriteError(f"'{path}' holds files edgeseg did not write ({listing}); choose another --out or empty it")


def atomic_dir(path: str | Path, build: Callable[[Path], None]) -> None:
    """Build a folder in a temporary sibling, then swap it in: readers see old or new, never a mix.

    Before building, what a killed earlier build left (a stale temporary folder, an old folder
    set aside between two renames) is cleaned up or put back.

    Args:
        path: the folder to (re)place.
        build: writes the folder's content into the temporary folder it is given.

    Raises:
        WriteError: the folder cannot be written or the disk is full, or `path` is a file or a
            folder of someone else's files (it is never replaced); `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        _check_replaceable(path)
        remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _explain(path, exc) from None
    except BaseException:
        # Ctrl-C inside mkdtemp: its folder may exist before its name is returned.
        _drop_own_temps(path)
        raise
    try:
        build(tmp)
        (tmp / OWNED_MARK).write_text("written by edgeseg; replaced whole when edgeseg writes this folder again\n")
        _fsync_tree(tmp)
        os.chmod(tmp, _mode_for(path, 0o777))
        _swap_in(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        recover_dir(path)
        raise _explain(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _drop_own_temps(path)
        recover_dir(path)
        raise


def _drop_own_temps(path: Path) -> None:
    """Remove this process's temporary folders for `path` (its pid and host are in their names)."""
    for left in path.parent.glob(glob.escape(_tmp_prefix(path)) + "*.tmp"):
        shutil.rmtree(left, ignore_errors=True)


def recover_dir(path: str | Path) -> None:
    """Undo a crash between the two renames of atomic_dir's fallback swap.

    The old folder set aside as `.NAME.old` goes back to `path` when `path` is missing, and is
    deleted when `path` (the complete new folder) exists.
    """
    path = Path(path)
    old = path.parent / f".{path.name}.old"
    if not old.exists():
        return
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, path)


def check_writable(folder: str | Path) -> Path:
    """Create `folder` if needed and fail early, with the fix, when it cannot be written.

    Also removes the temporaries that killed edgeseg runs of this host left in it.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.", delete=True)
        probe.close()
    except OSError as exc:
        raise WriteError(f"output folder '{folder}' is not writable ({exc.strerror}); pass a writable --out") from None
    sweep_stale_temps(folder)  # what killed runs left in it (files of a name written once, too)
    return folder


def spare_inputs(outputs: dict[str, Path | None], inputs: list[Path]) -> None:
    """Refuse a command whose output would overwrite or replace one of its own inputs.

    Args:
        outputs: option name -> the file or folder that option writes (None: not given).
        inputs: the command's input files and folders (a folder counts with every file in it).

    Raises:
        WriteError: an output is an input, lies inside an input folder's files, or is a folder
            (replaced whole) that holds an input.
    """
    held: list[Path] = []
    for path in inputs:
        path = Path(path)
        held.append(path.resolve())
        if path.is_dir():
            held += [p.resolve() for p in path.rglob("*") if p.is_file()]
    for flag, out in outputs.items():
        if out is None:
            continue
        target = Path(out).resolve()
        for inp in held:
            if inp == target or target in inp.parents:
                raise WriteError(f"{flag} '{out}' would overwrite this command's input '{inp}'; write the output somewhere else")
