"""Manifest squatting (docs/THREATS.md): someone publishes a backdated manifest with other settings
under a live run's id. Peers that pinned the run (their checkpoint directory) or name its creator
(--run-creator) keep the real run. Real peer processes and DHT nodes on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from hivemind.utils import get_dht_time

from onebyte.coordinator_free.manifest import RunManifest, pick_manifest
from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from tests.support.swarm import ROOT, START, TINY, WAIT, Swarm

COMMON = ["--batch-size", "4", "--checkpoint-interval", "0"]
RUN = [*TINY, "--round-seconds", "1.5", "--contribs-per-round", "2", "--hash-every", "5"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onebyte.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.mark.long
def test_a_backdated_manifest_does_not_capture_pinned_or_creator_bound_peers(tmp_path):
    run, rounds = "squat", 40
    creator = cli("identity", "--identity", str(tmp_path / "a.pem")).stdout.strip()
    assert len(creator) == 64, creator
    b_args = [
        "--run-id",
        run,
        "--rounds",
        str(rounds),
        *COMMON,
        "--shard",
        "1/2",
        "--checkpoint-dir",
        str(tmp_path / "b.ck"),
        "--identity",
        str(tmp_path / "b.pem"),
    ]
    with Swarm(tmp_path) as swarm:
        swarm.peer("b", *b_args, *WAIT)
        swarm.wait_waiting("b")
        swarm.peer(
            "a",
            "--run-id",
            run,
            "--rounds",
            str(rounds),
            *COMMON,
            "--new-run",
            "--start-delay",
            START,
            *RUN,
            "--shard",
            "0/2",
            "--identity",
            str(tmp_path / "a.pem"),
        )
        swarm.wait_for_round("b", 3, timeout=180)
        pinned = json.loads((tmp_path / "b.ck" / run / "manifest.json").read_text())
        assert pinned["creator"] == creator

        # the squatter: a backdated copy of the manifest with 100x the lr, from its own key
        squatter = Identity()
        dht = start_dht(squatter, swarm.maddrs)
        try:
            client = RecordClient(dht, squatter)
            real = pick_manifest(client.read_manifests(run, lambda v: RunManifest(**v)), run)[1]
            fake = real.model_copy(update={"created_at": real.created_at - 3600, "lr": real.lr * 100})
            assert client.publish_manifest(run, fake.model_dump(), get_dht_time() + 3600)
            # the earliest-manifest rule alone now picks the squatter's: this is the threat
            assert pick_manifest(client.read_manifests(run, lambda v: RunManifest(**v)), run)[0] == squatter.peer_id
        finally:
            dht.shutdown()
        status = cli("status", "--run-id", run, *[a for m in swarm.maddrs for a in ("--initial-peers", m)])
        assert status.returncode == 0, status.stderr[-2000:]
        assert "2 manifests claim this run id" in status.stdout and f"manifest by {creator}" in status.stdout, (
            status.stdout
        )
        assert "admission: public, every key counts" in status.stdout, status.stdout  # what a volunteer is joining

        # b crashes and restarts with its checkpoint dir (no --run-creator): it keeps the run it pinned
        swarm.procs["b"].send_signal(signal.SIGKILL)
        swarm.procs["b"].wait()
        swarm.peer("b2", *b_args)
        # a newcomer that names the creator joins the real run
        swarm.peer("c", "--run-id", run, "--rounds", str(rounds), *COMMON, "--shard", "1/2", "--run-creator", creator)
        # a newcomer that names some other key finds no such run: one clear line, exit 2
        other = Identity().peer_id
        swarm.peer("d", "--run-id", run, "--rounds", "2", "--join-timeout", "5", "--run-creator", other)
        for name in ("a", "b2", "c"):
            assert swarm.wait(name, timeout=240) == 0, swarm.log(name)[-3000:]
        assert swarm.wait("d", timeout=120) == 2, swarm.log("d")[-3000:]
        reports = {n: swarm.report(n) for n in ("a", "b2", "c")}
        d_log = swarm.log("d")
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {
        n: r["final_sha256"][:12] for n, r in reports.items()
    }
    assert all(r["run_creator"] == creator and r["manifest"]["lr"] == real.lr for r in reports.values())
    assert all(r["hash_mismatches"] == 0 for r in reports.values())
    assert f"no run 'squat' created by {other[:16]} is visible" in d_log and "Traceback" not in d_log
