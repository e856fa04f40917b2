"""The machine a result was measured on, recorded in every results JSON (timing is only comparable
on the same machine and load)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from harness import ROOT


def machine_info(threads: int) -> dict:
    """Python/torch/transformers versions, CPU, cores, torch threads, load, commit; the GPU too when
    CUDA is available (the key is absent on CPU-only machines)."""
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cpu": cpu_name(),
        "loadavg_at_end": os.getloadavg(),
        "git_head": git_head(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_head(mark_dirty: bool = True) -> str | None:
    """The commit the measured code is at (plus '+dirty' if onebyte/ has local edits and mark_dirty); read-only."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = mark_dirty and _git("status", "--porcelain", "--", "onebyte")
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def uptime() -> str:
    """`uptime`'s line (load averages) for logs taken while other work may share the machine."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
