"""Session hygiene: no hivemind daemon (p2pd) started by these tests may outlive them.

Every process started during the session inherits a marker in its environment; at the end, the
p2pd daemons carrying this session's marker are killed, and nothing else: other test sessions,
benchmarks or real peers on the same machine keep theirs.
"""

from __future__ import annotations

import os
import signal
import uuid

import psutil
import pytest

MARKER = "PYTEST_ONEBYTE_SESSION"  # not ONEBYTE_*: the demo strips those from its children


def _our_p2pd_processes(session: str) -> set[int]:
    out = set()
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if "p2pd" in (p.info["name"] or "") and p.environ().get(MARKER) == session:
                out.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def kill_leftover_daemons():
    session = os.environ.setdefault(MARKER, uuid.uuid4().hex)
    yield
    for pid in _our_p2pd_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
