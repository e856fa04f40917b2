"""Session hygiene: no hivemind daemon (p2pd) started by the tests may outlive them."""

from __future__ import annotations

import os
import signal

import psutil
import pytest


def _p2pd_processes() -> set[int]:
    out = set()
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if "p2pd" in (p.info["name"] or "") or any("p2pd" in part for part in (p.info["cmdline"] or [])[:1]):
                out.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def kill_leftover_daemons():
    before = _p2pd_processes()
    yield
    for pid in _p2pd_processes() - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
