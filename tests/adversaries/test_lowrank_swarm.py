"""Protocol v2 in a real swarm: three peer processes, a real DHT on loopback, a tiny model."""

from __future__ import annotations

import pytest

from tests.support.swarm import START, TINY, WAIT, Swarm


@pytest.mark.long
def test_three_peers_agree_under_v2_and_a_v1_only_peer_is_refused_in_one_line(tmp_path):
    rounds = 8
    with Swarm(tmp_path, in_process=True) as swarm:
        common = ["--run-id", "v2", "--rounds", str(rounds), "--batch-size", "4"]
        swarm.peer(
            "b", *common, *WAIT, "--shard", "1/3", "--population", "2"
        )  # both of its contributions in one batched forward
        swarm.peer("c", *common, *WAIT, "--shard", "2/3")
        swarm.wait_waiting("b", "c")
        swarm.peer(
            "a",
            *common,
            "--new-run",
            "--start-delay",
            START,
            *TINY,
            "--directions",
            "lowrank:1",
            "--round-seconds",
            "4",
            "--contribs-per-round",
            "2",
            "--hash-every",
            "2",
            "--shard",
            "0/3",
        )
        swarm.peer("old", "--run-id", "v2", "--join-timeout", "60", launcher=("-m", "tests.adversaries.v1_only_peer"))
        swarm.peer("dense", "--run-id", "v2", "--directions", "dense", "--join-timeout", "60")
        assert swarm.wait("old", timeout=180) == 2, swarm.log("old")[-3000:]
        assert swarm.wait("dense", timeout=180) == 2, swarm.log("dense")[-3000:]
        for name in "abc":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "abc"}
        old, dense, b_log = swarm.log("old"), swarm.log("dense"), swarm.log("b")
    refusals = [line for line in old.splitlines() if "error:" in line]
    assert (
        len(refusals) == 1 and "run 'v2' uses protocol version 2" in refusals[0] and "upgrade onebyte" in refusals[0]
    ), old[-2000:]
    assert "Traceback" not in old
    assert "directions: run has 'lowrank:1', you passed 'dense'" in dense and "Traceback" not in dense
    assert len({r["final_sha256"] for r in reports.values()}) == 1
    assert "in-forward low-rank evaluation is not possible" not in b_log  # b's population batching ran in one forward
    total = sum(r["contributions_published"] for r in reports.values())
    assert total > 0  # how many each peer makes depends on the machine's load, not on the protocol
    for r in reports.values():
        assert r["manifest"]["directions"] == "lowrank:1" and r["protocol_version"] == 2
        assert r["contributions_applied_local"] + r["contributions_applied_remote"] == total
        assert (
            r["rounds_applied"] == rounds and r["hash_mismatches"] == 0 and r["hash_agreements"] >= 1
        )  # a late joiner votes only after catching up
        assert r["final_sha256"] != r["manifest"]["initial_sha256"]
