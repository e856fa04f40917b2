"""A bootstrap node and a peer that are each process 1 of their own pid namespace, as `docker run` starts
the image's command: both must run (an older DHT child took "my parent is pid 1" for "my parent died"
and hung the container with no output). Needs root and util-linux's unshare; skipped, saying so,
elsewhere."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading

import pytest

from tests.support.swarm import ROOT, TINY, Swarm

PID1 = ("unshare", "--pid", "--fork", "--mount-proc")


def _pid_namespaces_available() -> str | None:
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not installed"
    r = subprocess.run([*PID1, "true"], capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else f"cannot make a pid namespace (needs root): {r.stderr.strip()}"


class Pid1Swarm(Swarm):
    """Swarm whose bootstrap node is pid 1 of a new pid namespace, as in a container."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.in_process = False
        self.procs = {}
        out = open(workdir / "bootstrap.log", "w")
        cmd = [*PID1, sys.executable, "-m", "onebyte.cli", "bootstrap"]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.boot = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out, text=True, cwd=ROOT, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [*(lines.put(x) for x in self.boot.stdout), lines.put("")], daemon=True).start()
        self.maddrs = []
        try:  # the hang this test exists for printed nothing at all: wait for the address, with slack
            while not self.maddrs:
                line = lines.get(timeout=120)
                if not line:  # it exited
                    break
                if line.startswith("/ip4/"):
                    self.maddrs.append(line.strip())
        except queue.Empty:
            pass


def test_bootstrap_and_peer_run_as_pid_1(tmp_path):
    why = _pid_namespaces_available()
    if why:
        pytest.skip(why)
    with Pid1Swarm(tmp_path) as swarm:
        assert swarm.maddrs, "the bootstrap node as pid 1 printed no address:\n" + swarm.log("bootstrap")[-3000:]
        args = ["--run-id", "pid1", "--rounds", "3", "--new-run", "--start-delay", "5", "--round-seconds", "4", *TINY]
        swarm.peer("a", *args, prefix=PID1)
        assert swarm.wait("a", timeout=600) == 0, swarm.log("a")[-3000:]
        rounds = [json.loads(line) for line in (tmp_path / "a.rounds.jsonl").read_text().splitlines() if line.strip()]
        assert max(r["round"] for r in rounds) == 2, rounds
        assert swarm.report("a")["rounds_applied"] == 3, swarm.report("a")
