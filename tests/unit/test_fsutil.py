"""Atomic writes: an interrupted or failed write leaves the old file (or folder) and no temporary
behind; a full disk is a one-line WriteError; a crash between two renames is undone."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edgeseg import fsutil
from edgeseg.fsutil import OWNED_MARK, WriteError, append_text, atomic_dir, atomic_open, copy_file, recover_dir, write_bytes, write_json

REPO = Path(__file__).resolve().parents[2]


def _listing(folder: Path) -> list[str]:
    """Every entry under `folder` (hidden ones included, but edgeseg's folder mark), relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.name != OWNED_MARK)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tree(folder: Path, files: dict[str, bytes]) -> None:
    """A folder as atomic_dir leaves it: the files plus edgeseg's mark (so it may be replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNED_MARK).write_text("")
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != OWNED_MARK}


def test_write_replaces_content_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    write_json(target, {"v": 2})
    assert target.read_text() == '{\n  "v": 2\n}\n'
    assert _listing(tmp_path) == ["a.json"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_inside_write_keeps_old_file_and_no_temp(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)), atomic_open(target) as fh:
        fh.write(b"half of the new")
        raise exc
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["ckpt.pt"]


def _enospc(*_: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_on_fsync_is_write_error_and_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.json"
    target.write_bytes(b"old")
    monkeypatch.setattr(fsutil.os, "fsync", _enospc)
    with pytest.raises(WriteError, match=r"^disk full while writing '.*results\.json'; free space and run again"):
        write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["results.json"]


class _FullDisk(io.FileIO):
    """A file whose writes fail with ENOSPC after `room` bytes, as on a nearly full disk."""

    room = 10

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.room:
            _enospc()
        return super().write(data)


def test_disk_full_on_write_is_write_error_and_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    monkeypatch.setattr(fsutil.os, "fdopen", lambda fd, mode: _FullDisk(fd, "w"))
    with pytest.raises(WriteError) as info:
        write_bytes(target, b"x" * 100)
    assert str(info.value) == f"disk full while writing '{target}'; free space and run again (the old file is untouched)"
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["model.onnx"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A real 64 KiB file system (tmpfs); skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a 64 KiB tmpfs needs root (simulated ENOSPC is tested above)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_disk_full_keeps_old_file(tiny_disk: Path) -> None:
    target = tiny_disk / "best.pt"
    write_bytes(target, b"old" * 1000)
    with pytest.raises(WriteError, match=r"^disk full while writing '.*best\.pt'"):
        write_bytes(target, os.urandom(200_000))
    assert target.read_bytes() == b"old" * 1000
    assert _listing(tiny_disk) == ["best.pt"]


@pytest.fixture
def read_only(tmp_path: Path) -> Any:
    """A folder this process cannot write: chmod 0500, or for root a read-only tmpfs."""
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    if os.geteuid() != 0:
        yield ro
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("root writes anywhere and mounting a read-only tmpfs is not allowed here")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_unwritable_folder_names_it_and_the_fix(read_only: Path) -> None:
    with pytest.raises(WriteError, match=r"cannot write '.*ro/x\.json' .*choose a writable --out"):
        write_json(read_only / "x.json", {})
    with pytest.raises(WriteError, match=r"cannot write '.*ro/art' .*choose a writable --out"):
        atomic_dir(read_only / "art", lambda tmp: None)


def test_new_files_follow_umask_and_replaced_files_keep_their_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_bytes(tmp_path / "new.bin", b"1")
        assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
        (tmp_path / "shared.bin").write_bytes(b"0")
        (tmp_path / "shared.bin").chmod(0o664)
        write_bytes(tmp_path / "shared.bin", b"1")
        assert (tmp_path / "shared.bin").stat().st_mode & 0o777 == 0o664
        atomic_dir(tmp_path / "art", lambda tmp: (tmp / "m").write_bytes(b"1"))
        assert (tmp_path / "art").stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0700
    finally:
        os.umask(old)


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    host = fsutil._HOST
    dead = f".last.pt.{_dead_pid()}-{host}.abc123.tmp"
    live = f".last.pt.{os.getppid()}-{host}.def456.tmp"
    other_host = f".last.pt.{_dead_pid()}-ffffff.ghi789.tmp"
    for name in (dead, live, other_host):
        (tmp_path / name).write_bytes(b"half")
    write_bytes(tmp_path / "last.pt", b"whole")
    assert _listing(tmp_path) == sorted([live, other_host, "last.pt"])


def test_append_text_and_copy_file(tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"
    append_text(log, "a,b\n")
    append_text(log, "1,2\n")
    assert log.read_text() == "a,b\n1,2\n"
    copy_file(log, tmp_path / "copy.csv")
    assert (tmp_path / "copy.csv").read_bytes() == log.read_bytes()
    assert _listing(tmp_path) == ["copy.csv", "metrics.csv"]


def _build(files: dict[str, bytes], fail: BaseException | None = None) -> Any:
    def build(tmp: Path) -> None:
        _tree(tmp, files)
        if fail is not None:
            raise fail

    return build


def test_atomic_dir_swaps_in_the_new_folder_and_removes_the_old(tmp_path: Path) -> None:
    art = tmp_path / "onnx_int8_os16"
    _tree(art, {"model.onnx": b"old", "stale.txt": b"only in old"})
    atomic_dir(art, _build({"model.onnx": b"new", "meta.json": b"{}"}))
    assert _read_tree(art) == {"meta.json": b"{}", "model.onnx": b"new"}
    assert _listing(tmp_path) == ["onnx_int8_os16", "onnx_int8_os16/meta.json", "onnx_int8_os16/model.onnx"]


@pytest.mark.parametrize("fail", [RuntimeError("exporter failed"), KeyboardInterrupt(), OSError(errno.ENOSPC, "full")])
def test_atomic_dir_failure_keeps_old_folder_and_no_temp(tmp_path: Path, fail: BaseException) -> None:
    art = tmp_path / "openvino_int8_os16"
    _tree(art, {"model.xml": b"old xml", "model.bin": b"old bin"})
    expected = WriteError if isinstance(fail, OSError) else type(fail)
    with pytest.raises(expected) as info:
        atomic_dir(art, _build({"model.xml": b"new xml"}, fail))
    if isinstance(fail, OSError):  # an OSError becomes the one-line WriteError that names the folder
        assert str(info.value) == f"disk full while writing '{art}'; free space and run again (the old file is untouched)"
    else:  # anything else passes through as it was raised
        assert info.value is fail
    assert _read_tree(art) == {"model.bin": b"old bin", "model.xml": b"old xml"}
    assert _listing(tmp_path) == ["openvino_int8_os16", "openvino_int8_os16/model.bin", "openvino_int8_os16/model.xml"]


def test_exchange_swaps_two_folders_in_one_step(tmp_path: Path) -> None:
    _tree(tmp_path / "a", {"f": b"A"})
    _tree(tmp_path / "b", {"f": b"B"})
    if not fsutil._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this OS or file system has no atomic exchange (atomic_dir falls back to two renames)")
    assert (tmp_path / "a/f").read_bytes() == b"B" and (tmp_path / "b/f").read_bytes() == b"A"


def test_two_rename_fallback_restores_old_folder_when_second_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    art = tmp_path / "art"
    _tree(art, {"m": b"old"})
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    atomic_dir(art, _build({"m": b"new"}))  # the fallback works when nothing fails
    assert _read_tree(art) == {"m": b"new"} and _listing(tmp_path) == ["art", "art/m"]

    real_replace, calls = os.replace, []

    def replace(src: Any, dst: Any) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # art -> .art.old done; the new folder's rename fails
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace)
    with pytest.raises(WriteError, match=r"cannot write '.*art' \(I/O error\)"):
        atomic_dir(art, _build({"m": b"newer"}))
    assert _read_tree(art) == {"m": b"new"} and _listing(tmp_path) == ["art", "art/m"]


CRASH_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from edgeseg import fsutil

fsutil._exchange = lambda a, b: False  # the two-rename fallback, whose window we hit
real, calls = os.replace, []
def replace(src, dst):
    calls.append(src)
    if len(calls) == 2:
        os._exit(9)  # the process dies between the renames: no cleanup runs
    real(src, dst)
fsutil.os.replace = replace
def build(tmp):
    (tmp / "m").write_bytes(b"new")
fsutil.atomic_dir(Path(sys.argv[1]), build)
"""


def test_recover_dir_after_a_crash_between_the_renames(tmp_path: Path) -> None:
    art = tmp_path / "art"
    _tree(art, {"m": b"old"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH_BETWEEN_RENAMES), str(art)], env=env, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    # The crash left: no 'art', the old folder set aside, the complete new one under a temp name.
    left = _listing(tmp_path)
    temps = [name for name in left if name.startswith(".art.") and name.endswith(".tmp")]
    assert len(temps) == 1, left
    assert left == sorted([".art.old", ".art.old/m", temps[0], f"{temps[0]}/m"])
    assert (tmp_path / temps[0] / "m").read_bytes() == b"new" and (tmp_path / ".art.old/m").read_bytes() == b"old"

    recover_dir(art)
    assert _read_tree(art) == {"m": b"old"}
    # The next build cleans what the dead writer left and swaps in its own folder.
    atomic_dir(art, _build({"m": b"next"}))
    assert _read_tree(art) == {"m": b"next"}
    assert _listing(tmp_path) == ["art", "art/m"]


def test_recover_dir_drops_old_copy_when_new_folder_is_in_place(tmp_path: Path) -> None:
    _tree(tmp_path / "art", {"m": b"new"})
    _tree(tmp_path / ".art.old", {"m": b"old"})
    recover_dir(tmp_path / "art")
    assert _listing(tmp_path) == ["art", "art/m"] and (tmp_path / "art/m").read_bytes() == b"new"


def test_atomic_dir_puts_old_folder_back_before_building(tmp_path: Path) -> None:
    _tree(tmp_path / ".art.old", {"m": b"old"})  # what a crash between the renames leaves

    def build(tmp: Path) -> None:
        assert (tmp_path / "art/m").read_bytes() == b"old"  # readers see the old one meanwhile
        (tmp / "m").write_bytes(b"new")

    atomic_dir(tmp_path / "art", build)
    assert _listing(tmp_path) == ["art", "art/m"] and (tmp_path / "art/m").read_bytes() == b"new"


def test_check_writable_sweeps_what_killed_runs_left(tmp_path: Path) -> None:
    host, dead = fsutil._HOST, _dead_pid()
    left = [f".fp32.pt.{dead}-{host}.a1b2c3d4.tmp", f".best.pt.{dead}-{host}.zz_9.tmp", f".onnx_fp32_os16.{dead}-{host}.q1w2e3.tmp"]
    kept = [f".last.pt.{os.getpid()}-{host}.abc.tmp", ".notes.tmp", "user.1-ffffff.x.tmp"]
    for name in left[:2] + kept:
        (tmp_path / name).write_bytes(b"half")
    _tree(tmp_path / left[2], {"model.onnx": b"half"})
    assert fsutil.check_writable(tmp_path) == tmp_path
    assert _listing(tmp_path) == sorted(kept)


def test_scratch_dir_is_removed_and_cleans_what_a_killed_process_left(tmp_path: Path) -> None:
    killed = tmp_path / f".scratch.{_dead_pid()}-{fsutil._HOST}.abc123.tmp"
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"half")
    with fsutil.scratch_dir(tmp_path) as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(f".scratch.{os.getpid()}-")
        (scratch / "model.onnx").write_bytes(b"x")
        assert not killed.exists()
    assert _listing(tmp_path) == []
    with pytest.raises(RuntimeError), fsutil.scratch_dir(tmp_path) as scratch:
        raise RuntimeError("boom")
    assert _listing(tmp_path) == []


def test_atomic_dir_never_replaces_what_edgeseg_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_bytes(b"user data")
    with pytest.raises(WriteError) as info:
        atomic_dir(tmp_path / "a_file", _build({"m": b"new"}))
    assert str(info.value) == f"'{tmp_path / 'a_file'}' exists and is not a folder edgeseg wrote; move it away or choose another --out"
    theirs = tmp_path / "documents"
    theirs.mkdir()
    (theirs / "thesis.tex").write_bytes(b"years of work")
    with pytest.raises(WriteError) as info:
        atomic_dir(theirs, _build({"report.md": b"new"}))
    assert str(info.value) == f"'{theirs}' holds files edgeseg did not write (thesis.tex); choose another --out or empty it"
    assert (tmp_path / "a_file").read_bytes() == b"user data" and _read_tree(theirs) == {"thesis.tex": b"years of work"}
    (tmp_path / "empty").mkdir()
    atomic_dir(tmp_path / "empty", _build({"m": b"new"}))  # an empty folder is fine, and is marked as edgeseg's
    assert _read_tree(tmp_path / "empty") == {"m": b"new"} and (tmp_path / "empty" / OWNED_MARK).is_file()
    atomic_dir(tmp_path / "empty", _build({"m": b"newer"}))
    assert _read_tree(tmp_path / "empty") == {"m": b"newer"}
