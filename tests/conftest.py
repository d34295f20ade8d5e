"""Shared fixtures: the real data beside the checkout, and child processes watched for events.

The shared folder (data and weights) is resolved here only: $EDGESEG_SHARED, else ../shared
beside the checkout. A test that needs it takes a fixture below, which skips with the path and
the fix where it is absent (`-rs` in pytest's addopts lists every skip with its reason); set
EDGESEG_REQUIRE_SHARED=1 where the data must be there (CI with the data mounted) to turn those
skips into failures.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGESEG_SHARED", REPO.parent / "shared"))
CAMVID = SHARED / "data" / "camvid"
BACKBONE = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
EVENT_TIMEOUT_S = 300.0  # for an event a child process prints or writes: generous, never a timing guess
RUN_TIMEOUT_S = 1800.0  # for a whole child run: only a guard against a hang

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _missing(what: str) -> None:
    message = f"{what} (set EDGESEG_SHARED to the folder holding data/ and weights/; now {SHARED})"
    if os.environ.get("EDGESEG_REQUIRE_SHARED") == "1":
        pytest.fail(f"EDGESEG_REQUIRE_SHARED=1 but {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder itself (data/, weights/), for tests that look for their own files in it."""
    if not SHARED.is_dir():
        _missing(f"shared folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "val").is_dir():
        _missing(f"CamVid not found at {CAMVID}")
    return CAMVID


@pytest.fixture(scope="session")
def backbone_weights() -> Path:
    if not BACKBONE.is_file():
        _missing(f"ImageNet MobileNetV2 weights not found at {BACKBONE}")
    return BACKBONE


@pytest.fixture
def interrupt_at() -> Callable[[int], Callable[..., None]]:
    """interrupt_at(step): a training progress callback that presses CTRL-C (SIGINT) right after `step`."""

    def make(step: int) -> Callable[..., None]:
        def callback(event: str, **info: Any) -> None:
            if event == "step" and info["it"] == step:
                os.kill(os.getpid(), signal.SIGINT)

        return callback

    return make


class Watched:
    """A child process whose stderr is read line by line on a thread, so a test acts on what the
    code prints or writes (an event) instead of sleeping for a time that depends on the load.

    Every wait fails with the child's last lines when the child ends first or nothing happens
    within EVENT_TIMEOUT_S; none of them skips.
    """

    def __init__(self, cmd: list[str], **popen: Any) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
        self.lines: list[str] = []  # stderr so far, as the test has consumed it
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _tail(self) -> str:
        return "\n".join(self.lines[-30:])

    def wait_for_line(self, pattern: str, timeout: float = EVENT_TIMEOUT_S) -> re.Match[str]:
        """Block until the child prints a stderr line matching `pattern`; return the match."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s; last lines:\n{self._tail()}") from None
            if line is None:
                self._queue.put(None)  # the end stays visible to the next reader
                code = self.proc.wait()
                raise AssertionError(f"the child ended (exit {code}) before a line matching {pattern!r}; last lines:\n{self._tail()}")
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def wait_until(self, happened: Callable[[], bool], what: str, timeout: float = EVENT_TIMEOUT_S) -> None:
        """Poll `happened()` (a file appearing, a folder changing) until true while the child runs."""
        deadline = time.monotonic() + timeout
        while not happened():
            if self.proc.poll() is not None and not happened():  # ended: after a last look
                self.finish()
                raise AssertionError(f"the child ended (exit {self.proc.returncode}) before {what}; last lines:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:.0f} s; last lines:\n{self._tail()}")
            time.sleep(0.002)  # a poll interval, far below the time between any two events waited for

    def send(self, sig: int) -> int:
        """Send `sig` (if the child still runs), wait for the child to end; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.finish()
        return self.proc.returncode

    def exit_code(self, timeout: float = RUN_TIMEOUT_S) -> int:
        """Wait for the child to end on its own; its exit status."""
        self.finish(timeout)
        return self.proc.returncode

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> list[str]:
        """Wait for the child to end and its stderr to be read; every stderr line."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the child did not end within {timeout:.0f} s: {self.cmd}") from None
        self._reader.join()
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        self._queue.put(None)
        return self.lines


@pytest.fixture
def watch() -> Iterator[Callable[..., Watched]]:
    """watch(cmd, **popen): start `cmd` as a Watched child; any still running at the end is killed."""
    started: list[Watched] = []

    def start(cmd: list[str], **popen: Any) -> Watched:
        child = Watched(cmd, **popen)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
