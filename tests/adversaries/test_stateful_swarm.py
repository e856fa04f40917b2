"""Protocol v3 in a real swarm: Adam's state travels with the weights. Real peers and DHT nodes on
loopback: a creator and a member with checkpoints, a peer whose weights are altered (it repairs), a
late joiner that installs a checkpoint (weights and state), one that replays the log from round 0
(rebuilding the state), and a peer that only speaks versions 1 and 2 (refused in one line)."""

from __future__ import annotations

import pytest

from tests.support.swarm import START, TINY, WAIT, Swarm
from tests.swarm.test_catchup import events

ADAM = ["--optimizer", "adam", "--beta1", "0.9", "--beta2", "0.99", "--optim-eps", "1e-6", "--lr", "1e-4"]
COMMON = ["--run-id", "v3", "--batch-size", "4", "--checkpoint-interval", "0"]


@pytest.mark.long
def test_adam_state_travels_with_the_weights_through_catch_up_and_repair(tmp_path):
    rounds = 48
    run = ["--rounds", str(rounds), *COMMON]
    with Swarm(tmp_path, in_process=True) as swarm:
        swarm.peer("b", *run, *WAIT, "--shard", "1/3", "--checkpoint-dir", str(tmp_path / "b.ck"))
        swarm.peer("f", *run, *WAIT, "--shard", "2/3", launcher=("-m", "tests.adversaries.faulty_peer", "6"))
        swarm.wait_waiting("b", "f")
        swarm.peer(
            "a",
            *run,
            "--new-run",
            "--start-delay",
            START,
            *TINY,
            *ADAM,
            "--round-seconds",
            "1.5",
            "--contribs-per-round",
            "2",
            "--hash-every",
            "5",
            "--checkpoint-dir",
            str(tmp_path / "a.ck"),
            "--shard",
            "0/3",
        )
        swarm.peer("old", "--run-id", "v3", "--join-timeout", "60", launcher=("-m", "tests.adversaries.v2_only_peer"))
        swarm.wait_for_round("a", 20, timeout=300)
        swarm.peer("ck", *run, "--catch-up", "checkpoint", "--shard", "0/3")
        swarm.peer("log", *run, "--catch-up", "log", "--shard", "1/3")
        assert swarm.wait("old", timeout=180) == 2, swarm.log("old")[-3000:]
        names = ("a", "b", "f", "ck", "log")
        for name in names:
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in names}
        old, f_log = swarm.log("old"), swarm.log("f")
        caught = {n: events(swarm, n, "catchup") for n in ("ck", "log")}
    refusals = [line for line in old.splitlines() if "error:" in line]
    assert len(refusals) == 1 and "run 'v3' uses protocol version 3" in refusals[0], old[-2000:]
    assert "upgrade onebyte" in refusals[0] and "Traceback" not in old
    hashes = {n: r["final_sha256"] for n, r in reports.items()}
    assert len(set(hashes.values())) == 1, {n: h[:12] for n, h in hashes.items()}  # weights and Adam's state
    assert "FAULT INJECTED" in f_log and reports["f"]["repairs"] >= 1, f_log[-3000:]
    assert caught["ck"] and caught["ck"][0]["method"] == "checkpoint" and caught["ck"][0]["round"] >= 20, caught
    assert caught["log"] and caught["log"][0]["method"] == "log" and caught["log"][0]["from_round"] == -1, caught
    for n, r in reports.items():
        assert r["protocol_version"] == 3 and r["manifest"]["optimizer"] == "adam"
        assert r["final_sha256"] != r["manifest"]["initial_sha256"]
        # a checkpoint's rounds are installed, not applied; the log joiner replays every round
        assert (r["rounds_applied"] < rounds) if n == "ck" else (r["rounds_applied"] == rounds), (
            n,
            r["rounds_applied"],
        )
    for n in ("a", "b", "ck", "log"):  # they saw the altered peer disagree, but were never the ones to repair
        assert reports[n]["repairs"] == 0, (n, reports[n]["agreement"])
