"""Small helpers for tests that reach outside the Python process: a free loopback port, a system tool."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess


def apt_install(binary: str, package: str) -> str | None:
    """The path of ``binary``, installing Debian's ``package`` first if needed; None if impossible."""
    found = shutil.which(binary)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return None
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which(binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
