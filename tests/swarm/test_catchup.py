"""Join, leave, catch up and repair (issue 4): real peer processes and DHT nodes on loopback. Repair
of a peer altered on purpose and late hash votes: tests/adversaries/test_repair.py."""

from __future__ import annotations

import json
import signal
import time

import psutil
import pytest

from tests.support.swarm import START, TINY, WAIT, Swarm

COMMON = ["--batch-size", "4", "--checkpoint-interval", "0"]
RUN = [*TINY, "--round-seconds", "1.5", "--contribs-per-round", "2", "--hash-every", "5"]


def events(swarm: Swarm, name: str, kind: str) -> list[dict]:
    f = swarm.workdir / f"{name}.rounds.jsonl"
    return [e for e in map(json.loads, f.read_text().splitlines()) if e.get("event") == kind] if f.exists() else []


@pytest.mark.long
def test_late_joiner_catches_up_to_the_identical_hash(tmp_path):
    """A peer that joins after 40 rounds fetches a checkpoint (or the log) from a peer and ends identical."""
    # room for a slow start of the joiner (~50 s on a loaded 2-core machine): the others must still be there when it
    # asks
    rounds = 100
    with Swarm(tmp_path, in_process=True) as swarm:
        swarm.peer(
            "b",
            "--run-id",
            "late",
            "--rounds",
            str(rounds),
            *COMMON,
            *WAIT,
            "--shard",
            "1/2",
            "--checkpoint-dir",
            str(tmp_path / "b.ck"),
        )
        swarm.wait_waiting("b")
        swarm.peer(
            "a",
            "--run-id",
            "late",
            "--rounds",
            str(rounds),
            *COMMON,
            "--new-run",
            "--start-delay",
            START,
            *RUN,
            "--checkpoint-dir",
            str(tmp_path / "a.ck"),
            "--shard",
            "0/2",
        )
        swarm.wait_for_round("a", 40, timeout=240)
        swarm.peer("late", "--run-id", "late", "--rounds", str(rounds), *COMMON, "--shard", "1/2")
        for name in ("a", "b", "late"):
            assert swarm.wait(name, timeout=240) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in ("a", "b", "late")}
        caught = events(swarm, "late", "catchup")
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {
        n: r["final_sha256"][:12] for n, r in reports.items()
    }
    assert caught and caught[0]["from_round"] == -1 and caught[0]["round"] >= 40, caught
    assert reports["late"]["hash_mismatches"] == 0 and reports["late"]["hash_agreements"] >= 1


@pytest.mark.long
def test_killed_peer_restarts_from_its_checkpoint_dir_and_others_survive_crashes(tmp_path):
    """SIGKILL a peer mid-run and restart it with its --checkpoint-dir: it resumes and ends identical.
    Killing it and then the bootstrap node stalls nobody; Ctrl-C leaves cleanly and says so."""
    rounds = 80  # long enough that, on a loaded machine, the restarted peer still finds the others running
    ck = tmp_path / "c.ck"
    with Swarm(tmp_path) as swarm:
        swarm.peer("b", "--run-id", "crash", "--rounds", str(rounds), *COMMON, *WAIT, "--shard", "1/3")
        c_args = [
            "--run-id",
            "crash",
            "--rounds",
            str(rounds),
            *COMMON,
            "--shard",
            "2/3",
            "--checkpoint-dir",
            str(ck),
            "--identity",
            str(tmp_path / "c.pem"),
        ]
        swarm.peer("c", *c_args, *WAIT)
        swarm.peer("quitter", "--run-id", "crash", *COMMON, *WAIT, "--shard", "2/3")
        swarm.wait_waiting("b", "c", "quitter")
        swarm.peer(
            "a",
            "--run-id",
            "crash",
            "--rounds",
            str(rounds),
            *COMMON,
            "--new-run",
            "--start-delay",
            START,
            *RUN,
            "--shard",
            "0/3",
        )
        swarm.wait_for_round("c", 10, timeout=180)
        deadline = time.time() + 180  # a peer that caught up by log writes its first checkpoint at a later hash round
        while not sorted(ck.glob("*/ckpt-*.safetensors")) and time.time() < deadline:
            time.sleep(0.5)
        helpers = [
            p for p in psutil.Process(swarm.procs["c"].pid).children(recursive=True) if p.name() != "torch_shm_manager"
        ]
        swarm.procs["c"].send_signal(signal.SIGKILL)
        swarm.procs["c"].wait()
        assert {p.name() for p in helpers} >= {"p2pd"}
        _, alive = psutil.wait_procs(helpers, timeout=10)  # its DHT process and p2p daemon go with it
        assert not alive, alive
        killed_at = max(e["round"] for e in events(swarm, "c", "applied"))
        assert sorted(ck.glob("*/ckpt-*.safetensors")), "no checkpoint was written before the kill"
        # the others keep closing rounds without the dead peer
        swarm.wait_for_round("a", killed_at + 4, timeout=60)
        swarm.procs["quitter"].send_signal(signal.SIGINT)
        assert swarm.wait("quitter", 60) == 0
        swarm.peer("c2", *c_args)  # same identity and checkpoint dir
        swarm.wait_for_round("c2", killed_at + 6, timeout=120)
        swarm.boot.send_signal(signal.SIGKILL)  # the bootstrap node dies after everyone joined
        swarm.boot.wait()
        for name in ("a", "b", "c2"):
            assert swarm.wait(name, timeout=240) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in ("a", "b", "c2")}
        c2_log, quit_log = swarm.log("c2"), swarm.log("quitter")
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {
        n: r["final_sha256"][:12] for n, r in reports.items()
    }
    assert "resumed from ckpt-" in c2_log
    assert all(r["rounds_applied"] >= rounds - killed_at - 10 and r["hash_mismatches"] == 0 for r in reports.values())
    assert "left the run on request" in quit_log and "Traceback" not in quit_log


@pytest.mark.long
def test_corrupted_checkpoint_is_detected_and_not_used(tmp_path):
    """A truncated newest checkpoint is refused; the peer falls back to the older one and catches up."""
    rounds = 30
    ck = tmp_path / "b.ck"
    with Swarm(tmp_path) as swarm:
        b_args = [
            "--run-id",
            "corrupt",
            "--rounds",
            str(rounds),
            *COMMON,
            "--shard",
            "1/2",
            "--checkpoint-dir",
            str(ck),
        ]
        swarm.peer("b", *b_args, *WAIT)
        swarm.wait_waiting("b")
        swarm.peer(
            "a",
            "--run-id",
            "corrupt",
            "--rounds",
            str(rounds),
            *COMMON,
            "--new-run",
            "--start-delay",
            START,
            *RUN,
            "--checkpoint-dir",
            str(tmp_path / "a.ck"),
        )
        swarm.wait_for_round("b", 16, timeout=180)
        swarm.procs["b"].send_signal(signal.SIGKILL)
        swarm.procs["b"].wait()
        files = sorted(ck.glob("*/ckpt-*.safetensors"))
        assert len(files) == 2, files
        newest = files[-1]
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
        swarm.peer("b2", *b_args)
        for name in ("a", "b2"):
            assert swarm.wait(name, timeout=180) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in ("a", "b2")}
        b2_log = swarm.log("b2")
    assert f"not resuming from {newest.name}" in b2_log and "truncated or corrupted" in b2_log
    assert f"resumed from {files[0].name}" in b2_log
    assert reports["a"]["final_sha256"] == reports["b2"]["final_sha256"]
