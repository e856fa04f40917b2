"""Session hygiene for the whole tree, the kind marker of each folder, and the order of ``long`` tests.

Every test gets the marker of the folder it lives in (KINDS): ``pytest -m unit`` is the same set
as ``pytest tests/unit``.

No hivemind daemon (p2pd) started by these tests may outlive them.

Every process started during the session inherits a marker in its environment; at the end, the
p2pd daemons carrying this session's marker are killed, and nothing else: other test sessions,
benchmarks or real peers on the same machine keep theirs.
"""

from __future__ import annotations

import functools
import os
import signal
import uuid
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).resolve().parent
KINDS = {
    "unit": "unit",
    "cli": "cli",
    "swarm": "swarm",
    "adversaries": "adversary",
}  # folder -> marker (pyproject.toml)
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


def pytest_itemcollected(item: pytest.Item) -> None:
    """The marker of the item's folder, as it is collected: before -m deselection sees it."""
    path = Path(item.path).resolve()
    rel = path.relative_to(HERE).parts if path.is_relative_to(HERE) else ()
    if len(rel) > 1 and rel[0] in KINDS:
        item.add_marker(KINDS[rel[0]])


@pytest.fixture
def run_swarm(tmp_path):
    """tests.support.swarm.run_swarm in this test's tmp_path:
    ``reports = run_swarm(run_id=..., rounds=..., args=[...])``.
    """
    from tests.support.swarm import run_swarm  # imported here: unit tests do not load the swarm harness

    return functools.partial(run_swarm, tmp_path)


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: the shares are those of the tests that run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``long`` (swarm tests of several minutes) first on every xdist worker.

    pytest-xdist's worksteal scheduler hands each of its w workers one contiguous share of the
    collection and later moves tests from the tail of the longest queue to an idle worker. Dealing
    the long tests round-robin to the front of each share means every worker starts on long tests
    and the steals at the end move short ones, instead of one worker ending on a long test alone."""
    workers = max(1, int(getattr(config, "workerinput", {}).get("workercount", 1)))  # set on xdist's workers
    long = [i for i in items if i.get_closest_marker("long")]
    short = [i for i in items if not i.get_closest_marker("long")]
    ordered, left = [], len(items)
    for w in range(workers):
        size = left // (workers - w)  # the share worksteal sends this worker first
        mine = long[w::workers]
        take = max(0, size - len(mine))
        ordered += mine + short[:take]
        short = short[take:]
        left -= size
    items[:] = ordered + short
