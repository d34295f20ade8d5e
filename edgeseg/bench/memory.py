"""Resident-memory peak of a code section, for native runtimes (tracemalloc sees only Python).

On Linux the kernel's high-water mark (VmHWM) is reset by writing 5 to /proc/self/clear_refs,
so the peak of the section is exact. Where that is not possible, getrusage's max RSS is used and
the peak is known only when the section raised it above every earlier peak of the process.
"""

from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_mb(key: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_mb() -> float | None:
    rss = _status_mb("VmRSS")
    if rss is not None:
        return rss
    try:  # macOS and others: psutil when it happens to be installed (not a dependency)
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - absent or unsupported: the peak is then unknown
        return None


def _rusage_peak_mb() -> float | None:
    try:
        import resource  # Unix only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


class PeakMemory:
    """Measure the resident-memory peak above the RSS at start: `start()`, run, `peak_mb()`."""

    def __init__(self) -> None:
        self.rss0: float | None = None
        self.reset_ok = False
        self.peak0: float | None = None

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.rss0 = _rss_mb()
        self.peak0 = _status_mb("VmHWM") if self.reset_ok else _rusage_peak_mb()

    def absolute_peak_mb(self) -> float | None:
        """The process's resident-memory peak (MB) since start(), runtime and Python included."""
        if self.reset_ok:
            return _status_mb("VmHWM")
        peak = _rusage_peak_mb()
        return peak if peak is not None and self.peak0 is not None and peak > self.peak0 else None

    def peak_mb(self) -> float | None:
        """MB of resident memory added at the peak of the section, or None when unknowable."""
        if self.rss0 is None:
            return None
        if self.reset_ok:
            peak = _status_mb("VmHWM")
            return None if peak is None else max(0.0, peak - self.rss0)
        peak = _rusage_peak_mb()
        if peak is None or self.peak0 is None:
            return None
        return peak - self.rss0 if peak > self.peak0 else None
