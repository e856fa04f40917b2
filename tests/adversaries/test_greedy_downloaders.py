"""Serving is bounded (issue 22): a crowd of greedy downloaders (tests/adversaries/greedy_downloader.py: 5 libp2p
identities, waves of 50 concurrent .state and 50 .log requests) against one honest peer of a live swarm. The peer
answers within its serving budget (docs/PROTOCOL.md §14), refuses the excess at once with a busy answer, its memory
stays within 300 MB of where it was, it applies every round, and a joiner still catches up."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil
import pytest

from onebyte.p2p.serving import SERVE_PER_MINUTE, SERVE_PER_REQUESTER, SERVE_STREAMS, ServeBudget
from tests.support import figures
from tests.support.swarm import ROOT, START, TINY, WAIT, Swarm

MEMORY_BUDGET = 300 * 2**20


def test_the_serving_budget_admits_streams_per_requester_and_per_minute():
    b = ServeBudget(streams=3, per_requester=2, per_minute=4)
    assert b.admit("x") is None and b.admit("x") is None
    assert "already serving you" in b.admit("x")
    assert b.admit("y") is None
    assert "serving 3 transfers" in b.admit("z")  # the whole budget is in use
    for who in ("x", "x", "y"):
        b.release(who)
    assert b.active == {}
    assert b.admit("x") is None and (b.release("x") or True)
    assert b.admit("x") is None and (b.release("x") or True)
    assert "a minute from you" in b.admit("x")  # 4 started within the minute
    b.tokens["x"] = (0.0, time.monotonic() - 30)  # half a minute later: 2 more
    assert b.admit("x") is None and (b.release("x") or True)
    assert (SERVE_STREAMS, SERVE_PER_REQUESTER, SERVE_PER_MINUTE) == (4, 1, 12)  # what §14 says


class _RSS:
    """The peak resident memory of one process (not its children: p2pd is hivemind's), sampled 4 times a second."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.mark.long
def test_a_crowd_of_greedy_downloaders_gets_a_bounded_share_and_a_joiner_still_catches_up(tmp_path):
    rounds = 90
    common = ["--run-id", "greedy", "--rounds", str(rounds), "--batch-size", "4", "--checkpoint-interval", "0"]
    run = [*TINY, "--round-seconds", "2", "--contribs-per-round", "2", "--hash-every", "5"]
    with Swarm(tmp_path) as swarm:  # processes: the target's own memory is measured
        swarm.peer("b", *common, *WAIT, "--shard", "1/2", "--checkpoint-dir", str(tmp_path / "b.ck"))
        swarm.wait_waiting("b")
        swarm.peer("a", *common, "--new-run", "--start-delay", START, *run, "--checkpoint-dir", str(tmp_path / "a.ck"))
        swarm.wait_for_round("a", 10, timeout=300)  # a checkpoint at round 4 or 9 to serve
        target = swarm.log("a").split("[", 1)[1][:8]  # its log's tag: the peer id's first 8 hex digits
        baseline = _RSS(swarm.procs["a"].pid)
        time.sleep(3)
        before = baseline.stop()
        rss = _RSS(swarm.procs["a"].pid)
        started = swarm.events("a", "applied")[-1]["round"]
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests.adversaries.greedy_downloader", "--run-id", "greedy", "--target", target]
            + ["--initial-peers", *swarm.maddrs, "--seconds", "30", "--out", str(tmp_path / "attacker.json")],
            cwd=ROOT,
            stdout=open(tmp_path / "attacker.log", "w"),
            stderr=subprocess.STDOUT,
        )
        swarm.procs["attacker"] = attacker
        time.sleep(10)
        swarm.peer("late", *common, "--shard", "1/2")  # joins while the crowd downloads
        assert attacker.wait(timeout=300) == 0, (tmp_path / "attacker.log").read_text()[-3000:]
        peak = rss.stop()
        ended = swarm.events("a", "applied")[-1]["round"]
        for name in ("a", "b", "late"):
            assert swarm.wait(name, timeout=400) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in ("a", "b", "late")}
        applied = {e["round"]: e for e in swarm.events("a", "applied")}
        caught = swarm.events("late", "catchup")
    got = json.loads((tmp_path / "attacker.json").read_text())
    figures.record(
        "greedy downloaders",
        attacker=got,
        attack_rounds_without_own_contributions=[r for r in range(started + 1, ended) if applied[r]["local"] == 0],
        peer_memory_growth_mb=round((peak - before) / 2**20, 1),
        rounds_during_attack=[started, ended],
    )
    # the crowd was refused beyond the budget, and still served within it
    assert got["counts"]["state"]["busy"] > 0 and got["counts"]["state"]["served"] > 0, got
    assert peak - before < MEMORY_BUDGET, f"memory grew by {(peak - before) / 2**20:.0f} MB: {got}"
    # the target applied every round (its own contributions' share of them depends on how loaded the machine is:
    # reported, not asserted; 1 of 46 attack rounds without them on an idle 2-core machine, 7 of 18 under the full
    # test suite)
    assert sorted(applied) == list(range(rounds)), sorted(set(range(rounds)) - set(applied))
    # a joiner still caught up, from the target or elsewhere, and everyone agrees
    assert caught, swarm.log("late")[-3000:]
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {
        n: r["final_sha256"][:12] for n, r in reports.items()
    }
