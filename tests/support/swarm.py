"""Real processes for swarm tests: a bootstrap node and `onebyte peer` processes on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from onebyte.peer.demo import start_bootstrap
from tests.support.inproc import PeerThread

ROOT = Path(__file__).resolve().parents[2]
PEER = ("-m", "onebyte.cli")  # the real command; tests pass another launcher for a hostile or faulty program
# the small drugreview task (889 reviews) keeps the many peer processes of a swarm test quick to start
TINY = "--model tiny-llama --dataset drugreview --lr 1e-3 --eps 1e-3 --table-log2 20 --max-length 32".split()
# A swarm test starts its members first (with WAIT, they poll the DHT for the run's manifest) and the run's creator once
# they wait (Swarm.wait_waiting): then a peer's start-up, which takes 5 s on an idle machine and a minute on a loaded
# one, never eats into the rounds, and the creator's --start-delay only covers reading the manifest and building the
# model.
WAIT = ["--join-timeout", "900"]
# the creator's --start-delay once every member waits (and has warmed its imports:
# onebyte.tasks.pretrained.warm_imports)
START = "15"


class Swarm:
    """Owns every process it starts and kills them all on exit: nothing outlives a test."""

    in_process = False  # subclasses that start their own bootstrap node (namespaces, metrics) keep processes

    def __init__(self, workdir: Path, *, in_process: bool = False):
        """With ``in_process``, honest peers (the default launcher, no prefix) run as threads of this process
        (tests/support/inproc.py): the same peer without its process's imports. Attackers, wrapped or killed
        peers stay processes."""
        self.workdir = workdir
        self.in_process = in_process
        self.procs: dict[str, subprocess.Popen | PeerThread] = {}
        self.boot, self.maddrs = start_bootstrap(workdir)

    def peer(
        self, name: str, *args: str, launcher: tuple[str, ...] = PEER, prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen | PeerThread:
        """Start `onebyte peer` (or ``launcher``) as ``name``; ``prefix`` wraps the command (e.g. ip netns exec)."""
        argv = ["peer", "--no-progress", "--report", str(self.report_path(name))]
        argv += ["--round-log", str(self.workdir / f"{name}.rounds.jsonl")]
        for a in self.maddrs:
            argv += ["--initial-peers", a]
        if self.in_process and launcher == PEER and not prefix:
            p = PeerThread(name, [*argv, *args], self.workdir / f"{name}.log")
        else:
            log = open(self.workdir / f"{name}.log", "w")
            env = os.environ | {"PYTHONUNBUFFERED": "1"}
            cmd = [*prefix, sys.executable, *launcher, *argv, *args]
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.procs[name] = p
        return p

    def report_path(self, name: str) -> Path:
        return self.workdir / f"{name}.json"

    def report(self, name: str) -> dict:
        return json.loads(self.report_path(name).read_text())

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish in {timeout}s; log tail:\n" + self.log(name)[-3000:]) from None

    def wait_waiting(self, *names: str, timeout: float = 600) -> None:
        """Until every one of ``names`` has started and polls the DHT for the run's manifest."""
        deadline = time.time() + timeout
        for name in names:
            while "round=-1 waiting up to" not in self.log(name):
                if self.procs[name].poll() is not None:
                    raise AssertionError(
                        f"{name} exited early ({self.procs[name].returncode}):\n" + self.log(name)[-3000:]
                    )
                if time.time() > deadline:
                    raise AssertionError(f"{name} did not start in {timeout}s:\n" + self.log(name)[-3000:])
                time.sleep(0.5)

    def events(self, name: str, kind: str) -> list[dict]:
        """The events of one kind ("applied", "catchup", "eval") in a peer's round log, in order."""
        f = self.workdir / f"{name}.rounds.jsonl"
        return [e for e in map(json.loads, f.read_text().splitlines()) if e.get("event") == kind] if f.exists() else []

    def wait_for_round(self, name: str, round_: int, timeout: float) -> None:
        f = self.workdir / f"{name}.rounds.jsonl"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if f.exists() and any(
                json.loads(line).get("round", -1) >= round_ for line in f.read_text().splitlines() if line.strip()
            ):
                return
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited early ({self.procs[name].returncode}):\n" + self.log(name)[-3000:])
            time.sleep(0.5)
        raise AssertionError(f"{name} did not reach round {round_} in {timeout}s:\n" + self.log(name)[-3000:])

    def close(self) -> None:
        for p in [*self.procs.values(), self.boot]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.procs.values(), self.boot]:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                if isinstance(p, subprocess.Popen):
                    p.wait()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_swarm(
    workdir: Path,
    *,
    run_id: str,
    rounds: int,
    peers: int = 3,
    args: Sequence[str] = (),
    creator_args: Sequence[str] = (),
    timeout: float = 300,
) -> dict[str, dict]:
    """The usual swarm test's run: ``peers - 1`` members (b, c, ...; shard i/peers, WAIT) start and wait for the run,
    then its creator ``a`` starts it (--new-run, --start-delay START, TINY, then ``creator_args``); every peer must exit
    0 within ``timeout`` seconds. ``args`` go to every peer. Returns each peer's report: {"a": {...}, "b": {...}, ...}.
    The peers are threads of this process (Swarm(in_process=True)). Tests that need processes while they run (kill,
    restart, attackers) use Swarm itself."""
    names = "abcdefghijklmnopqrstuvwxyz"[:peers]
    common = ["--run-id", run_id, "--rounds", str(rounds), *args]
    with Swarm(workdir, in_process=True) as swarm:
        for i, name in enumerate(names[1:], start=1):
            swarm.peer(name, *common, *WAIT, "--shard", f"{i}/{peers}")
        swarm.wait_waiting(*names[1:])
        swarm.peer("a", *common, "--new-run", "--start-delay", START, *TINY, *creator_args)
        for name in names:
            assert swarm.wait(name, timeout=timeout) == 0, swarm.log(name)[-3000:]
        return {n: swarm.report(n) for n in names}
