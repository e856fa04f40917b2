"""The swarm: real hivemind DHT nodes and real peer processes on loopback, a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from hivemind.utils import get_dht_time

from onebyte.coordinator_free.manifest import RunManifest, pick_manifest
from onebyte.coordinator_free.rounds import RoundClock
from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import ContributionRecord, round_key
from onebyte.dht.validator import owner_subkey
from tests.support.swarm import START, TINY, WAIT, Swarm


@pytest.mark.long
def test_three_peers_thirty_rounds_identical_hashes_everyone_applies_everyone(run_swarm):
    rounds = 30
    reports = run_swarm(
        run_id="t3",
        rounds=rounds,
        args=["--batch-size", "4"],
        creator_args=["--round-seconds", "2", "--contribs-per-round", "2", "--hash-every", "5", "--shard", "0/3"],
        timeout=300,
    )
    assert len({r["final_sha256"] for r in reports.values()}) == 1
    published = {n: r["contributions_published"] for n, r in reports.items()}
    assert all(v > 0 for v in published.values()), published
    total = sum(published.values())
    for n, r in reports.items():
        assert r["rounds_applied"] == rounds and r["last_round"] == rounds - 1
        assert r["contributions_applied_local"] == published[n]  # my own, as published
        assert r["contributions_applied_remote"] == total - published[n]  # every other peer's
        assert r["hash_mismatches"] == 0 and r["hash_agreements"] >= 5
        assert len(r["hashes"]) >= 6 and r["final_sha256"] != r["manifest"]["initial_sha256"]


def test_lean_round_records_still_reach_every_peer(run_swarm):
    """--lean-replicas: round records go to and come from the 2 nearest nodes, with no DHT crawl."""
    rounds = 12
    reports = run_swarm(
        run_id="lean",
        rounds=rounds,
        args=["--batch-size", "4"],
        creator_args=["--round-seconds", "2", "--contribs-per-round", "2", "--hash-every", "3", "--lean-replicas", "2"],
        timeout=240,
    )
    assert {r["manifest"]["lean_replicas"] for r in reports.values()} == {2}
    assert len({r["final_sha256"] for r in reports.values()}) == 1
    total = sum(r["contributions_published"] for r in reports.values())
    assert total > 0
    for r in reports.values():
        assert r["contributions_applied_local"] + r["contributions_applied_remote"] == total
        assert r["hash_mismatches"] == 0


def test_conflicting_settings_are_refused_with_a_clear_message(tmp_path):
    with Swarm(tmp_path, in_process=True) as swarm:
        swarm.peer(
            "owner",
            "--run-id",
            "cfg",
            "--new-run",
            *TINY,
            "--round-seconds",
            "2",
            "--rounds",
            "40",
            "--start-delay",
            "2",
        )
        swarm.wait_for_round("owner", 0, timeout=120)
        swarm.peer("lr", "--run-id", "cfg", "--lr", "0.5")
        swarm.peer("model", "--run-id", "cfg", "--model", "tiny-gpt2")
        assert swarm.wait("lr", 120) == 2 and swarm.wait("model", 120) == 2
        assert "lr: run has 0.001, you passed 0.5" in swarm.log("lr")
        assert "model: run has 'tiny-llama', you passed 'tiny-gpt2'" in swarm.log("model")
        for name in ("lr", "model"):
            assert "Traceback" not in swarm.log(name)
        swarm.peer("nothing", "--run-id", "no-such-run", "--join-timeout", "3")
        assert swarm.wait("nothing", 120) == 2 and "no run 'no-such-run' is visible" in swarm.log("nothing")
        # a researcher looking for public runs finds this one, with its model, its live peer and its live round
        # (the run was announced at round -1 and is re-announced only every few minutes: the round comes from the
        # run's clock)
        swarm.wait_for_round("owner", 3, timeout=120)
        applied_before = _last_applied(tmp_path / "owner.rounds.jsonl")
        listing = subprocess.run(
            [sys.executable, "-m", "onebyte.cli", "runs", *sum((["--initial-peers", a] for a in swarm.maddrs), [])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listing.returncode == 0, listing.stderr
        row = next(line for line in listing.stdout.splitlines() if line.startswith("cfg "))
        assert "tiny-llama" in row and "drugreview" in row and row.split()[-1] == "1"
        assert applied_before - 1 <= int(row.split()[-2]) <= _last_applied(tmp_path / "owner.rounds.jsonl") + 5, row
        # an operator sees the live peer of the run, its round and its hash
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "onebyte.cli",
                "status",
                "--run-id",
                "cfg",
                *sum((["--initial-peers", a] for a in swarm.maddrs), []),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
        assert "1 live peer(s)" in status.stdout and "0.1.0" in status.stdout
        assert "run clock: round " in status.stdout, status.stdout


def _last_applied(round_log) -> int:
    events = [json.loads(line) for line in round_log.read_text().splitlines() if line.strip()]
    return max((e["round"] for e in events if e.get("event") == "applied"), default=-1)


def test_forged_malformed_and_late_records_are_rejected_and_change_nothing(tmp_path):
    rounds = 14
    with Swarm(tmp_path, in_process=True) as swarm:
        common = ["--run-id", "hostile", "--rounds", str(rounds), "--batch-size", "4"]
        swarm.peer("b", *common, *WAIT, "--shard", "1/2")
        swarm.wait_waiting("b")
        swarm.peer(
            "a",
            *common,
            "--new-run",
            "--start-delay",
            START,
            *TINY,
            "--round-seconds",
            "3",
            "--contribs-per-round",
            "2",
        )
        swarm.wait_for_round("a", 1, timeout=180)

        attacker = Identity()
        dht = start_dht(attacker, swarm.maddrs)
        try:
            client = RecordClient(dht, attacker)
            found = pick_manifest(client.read_manifests("hostile", lambda v: RunManifest(**v)), "hostile")
            assert found is not None
            m = found[1]
            clock = RoundClock(m.start_time, m.round_seconds, m.publish_margin, m.settle_seconds)
            victim = client.read_peers("hostile")
            victim_id = sorted(victim)[0]
            target = clock.round_at(time.time()) + 2

            # 1. a record under the victim's subkey, signed by the attacker: the DHT refuses it
            forged = ContributionRecord(round=target, published_at=time.time(), codes=bytes([0x7F, 0x7F])).pack()
            ok = dht.store(
                round_key("hostile", target),
                forged,
                get_dht_time() + 600,
                subkey=owner_subkey(bytes.fromhex(victim_id)),
                return_future=True,
            ).result(timeout=30)
            assert not ok
            # 2. well-signed garbage, a record naming another round, too many codes: readers reject and count them
            assert client._store(round_key("hostile", target), {"not": "a record"}, get_dht_time() + 600)
            wrong = ContributionRecord(round=target + 5, published_at=time.time(), codes=bytes([0x7F])).pack()
            assert client._store(round_key("hostile", target + 1), wrong, get_dht_time() + 600)
            big = ContributionRecord(round=target + 2, published_at=time.time(), codes=bytes([0x7F] * 50)).pack()
            assert client._store(round_key("hostile", target + 2), big, get_dht_time() + 600)
            # 3. a record that arrives late: published after its round closed, before the peers read it
            late_round = target + 3
            while time.time() < clock.close(late_round) + 0.2:
                time.sleep(0.05)
            late = ContributionRecord(round=late_round, published_at=time.time(), codes=bytes([0x7F, 0x7F])).pack()
            assert client._store(round_key("hostile", late_round), late, get_dht_time() + 600)
            assert time.time() < clock.final_at(late_round)  # the peers have not read it yet
        finally:
            dht.shutdown()
        for name in "ab":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        ra, rb = swarm.report("a"), swarm.report("b")
    assert ra["final_sha256"] == rb["final_sha256"]
    total = ra["contributions_published"] + rb["contributions_published"]
    for r in (ra, rb):
        assert (
            r["contributions_applied_local"] + r["contributions_applied_remote"] == total
        )  # nothing of the attacker's
        assert r["rejected"].get("malformed", 0) >= 1
        assert r["rejected"].get("wrong_round", 0) >= 1
        assert r["rejected"].get("too_many_codes", 0) >= 1
        assert r["rejected"].get("late", 0) >= 1
        assert r["hash_mismatches"] == 0


@pytest.mark.parametrize("bad", ["bogus", "/ip4/127.0.0.1/tcp/1"])
def test_bad_initial_peer_address_is_a_clear_error(tmp_path, bad):
    r = subprocess.run(
        [sys.executable, "-m", "onebyte.cli", "peer", "--run-id", "x", "--initial-peers", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "multiaddr" in r.stderr and "Traceback" not in r.stderr
