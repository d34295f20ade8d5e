"""What a row was measured on: CPU, GPU, OS, Jetson L4T/JetPack, TensorRT (no SDK imports).

Everything here reads files or asks small system tools with a short timeout; a value that cannot
be found is None, never a guess.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgeseg.export.base import package_version

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text if out.returncode == 0 and text else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def cpu_name() -> str | None:
    """CPU model: /proc/cpuinfo on Linux (x86 'model name', Arm 'Hardware'), sysctl on macOS."""
    if platform.system() == "Darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"])
    info = _read(Path("/proc/cpuinfo")) or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", info, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or None


def usable_cores() -> int | None:
    """Cores this process may run on (CPU affinity where the OS has it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def gpu_name() -> str | None:
    """GPU names from nvidia-smi, else the Jetson board model from the device tree."""
    names = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if names:
        return ", ".join(n.strip() for n in names.splitlines() if n.strip())
    if TEGRA_RELEASE.is_file():
        return _read(DEVICE_TREE_MODEL)
    return None


def parse_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3' (the L4T version)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def jetson_versions() -> dict[str, str | None]:
    """L4T from /etc/nv_tegra_release and JetPack from the nvidia-jetpack package, on a Jetson."""
    text = _read(TEGRA_RELEASE)
    if text is None:
        return {"l4t": None, "jetpack": None}
    jetpack = _run(["dpkg-query", "--showformat=${Version}", "--show", "nvidia-jetpack"])
    return {"l4t": parse_tegra_release(text), "jetpack": jetpack}


def os_name() -> str:
    """'Ubuntu 22.04.4 LTS (Linux 6.8.0)' / 'macOS 14.5' / platform fallback."""
    system = platform.system()
    if system == "Darwin":
        return f"macOS {platform.mac_ver()[0]}"
    if system == "Linux":
        text = _read(Path("/etc/os-release")) or ""
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.MULTILINE)
        release = platform.release().split("-")[0]
        return f"{m.group(1)} (Linux {release})" if m else f"Linux {release}"
    return f"{system} {platform.release()}"


def device_record() -> dict[str, Any]:
    """The machine part of a result row (the runtime part is added by the runner)."""
    record: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": usable_cores(),
        "gpu": gpu_name(),
        "os": os_name(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    record.update(jetson_versions())
    record["tensorrt"] = package_version("tensorrt")
    return record


def device_label(device: dict[str, Any]) -> str:
    """Short name of a device for tables and plot titles: the GPU when there is one, else the CPU."""
    if device.get("l4t"):
        name = device.get("gpu") or "Jetson"
        jp = f" JetPack {device['jetpack']}" if device.get("jetpack") else f" L4T {device['l4t']}"
        return f"{name}{jp}"
    what = device.get("cpu") or device.get("machine") or "unknown CPU"
    cores = f" ({device['cores']} cores)" if device.get("cores") else ""
    gpu = f" + {device['gpu']}" if device.get("gpu") else ""
    return f"{what}{cores}{gpu}, {device.get('os') or '?'}"
