"""Non-finite losses (issue 6): a peer whose loss turns NaN or infinite (tests/adversaries/hostile_peer.py
nonfinite) skips the contribution, never the weights, and leaves no corrupted checkpoint; also in a
swarm next to foreign checkpoints. Bad input as one clear line: tests/cli/test_bad_input.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from onebyte.peer.checkpoint import load_checkpoint
from onebyte.peer.train import TrainConfig, build
from tests.support.cli import TINY_PEER, onebyte

# -- non-finite losses: the contribution is skipped, never the weights ------------------------------------------


@pytest.mark.parametrize("every", [2, 1])
def test_non_finite_losses_skip_contributions_and_the_checkpoint_stays_intact(tmp_path, every):
    """Every `every`-th estimate sees a NaN, +inf or -inf loss (every=1: all of them)."""
    ck, rep = tmp_path / "ck.safetensors", tmp_path / "r.json"
    r = onebyte(
        "train",
        "--model",
        "tiny-llama",
        "--steps",
        "6",
        "--contribs",
        "2",
        "--batch-size",
        "4",
        "--eval-size",
        "8",
        "--no-progress",
        "--table-log2",
        "20",
        "--max-length",
        "32",
        "--lr",
        "1e-3",
        "--checkpoint",
        str(ck),
        "--report",
        str(rep),
        launcher=("-m", "tests.adversaries.hostile_peer", "nonfinite", str(every)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "contribution 1 skipped: non-finite g" in r.stderr
    report = json.loads(rep.read_text())
    assert report["contributions_skipped"] == 12 // every and report["contributions_made"] == 12 - 12 // every
    _, _, replica = build(TrainConfig(model="tiny-llama", table_log2=20, max_length=32, lr=1e-3, progress=False))
    info = load_checkpoint(ck, replica.params)  # verifies the file against its own hash
    assert info.sha256 == report["final_sha256"]
    assert all(torch.isfinite(t).all() for _, t in replica.params)
    if every == 1:
        assert report["final_sha256"] == report["initial_sha256"]  # nothing was applied
        assert all(math.isnan(x) for x in report["losses"])
    else:
        assert report["final_sha256"] != report["initial_sha256"]


# -- a checkpoint of another model or another run in the checkpoint dir -----------------------------------------


def _foreign_checkpoints(run_dir: Path, run_id: str) -> dict[str, bytes]:
    """Under names of rounds the run has not reached: a tiny-gpt2 checkpoint that claims to be this
    run's (right run id and initial hash in its metadata, another model's tensors), and a tiny-llama
    checkpoint written by `onebyte train` (the right model, not this run)."""
    from onebyte.peer.checkpoint import save_checkpoint

    run_dir.mkdir(parents=True)
    initial = build(TrainConfig(model="tiny-llama", table_log2=20, max_length=32, lr=1e-3, progress=False))[2].sha256()
    gpt2 = build(TrainConfig(model="tiny-gpt2", table_log2=20, max_length=32, lr=1e-3, progress=False))[2]
    save_checkpoint(
        run_dir / "ckpt-000000009.safetensors", gpt2.params, 9, {"run_id": run_id, "initial_sha256": initial}
    )
    t = onebyte(
        "train",
        "--model",
        "tiny-llama",
        "--steps",
        "1",
        "--eval-size",
        "4",
        "--no-progress",
        "--table-log2",
        "20",
        "--max-length",
        "32",
        "--checkpoint",
        str(run_dir / "ckpt-000000008.safetensors"),
    )
    assert t.returncode == 0, t.stderr[-2000:]
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_swarm_peer_with_foreign_checkpoints_and_non_finite_losses(tmp_path):
    """A swarm peer whose checkpoint dir holds checkpoints of another model and of another run (under
    names of rounds it has not reached) and whose loss is non-finite on every third estimate: it
    refuses the files (moved aside, untouched), starts from the run's initial weights, skips the
    bad contributions, publishes only finite codes, and its own checkpoints stay on disk, intact."""
    ck, rep = tmp_path / "ck", tmp_path / "r.json"
    foreign = _foreign_checkpoints(ck / "foreign", "foreign")
    r = onebyte(
        "peer",
        "--run-id",
        "foreign",
        "--new-run",
        *TINY_PEER,
        "--rounds",
        "5",
        "--hash-every",
        "2",
        "--checkpoint-dir",
        str(ck),
        "--checkpoint-interval",
        "0",
        "--report",
        str(rep),
        launcher=("-m", "tests.adversaries.hostile_peer", "nonfinite", "3"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(rep.read_text())
    # the foreign checkpoints: refused, moved aside byte for byte, never resumed from
    assert (
        "not resuming from ckpt-000000009.safetensors" in r.stderr
        and "not resuming from ckpt-000000008.safetensors" in r.stderr
    )
    assert "belongs to another model" in r.stderr and "is for run_id" in r.stderr
    assert report["checkpoints_rejected"] == 2 and "resumed from" not in r.stderr
    for name, data in foreign.items():
        assert (ck / "foreign" / f"{name}.refused").read_bytes() == data
    # the non-finite losses: skipped, and what was published is what was applied
    assert report["skipped_nonfinite"] >= 1 and report["contributions_published"] >= 1
    assert report["contributions_applied_local"] == report["contributions_published"]
    assert (
        report["rounds_applied"] == 5
        and report["final_sha256"] == report["hashes"]["4"] != report["manifest"]["initial_sha256"]
    )
    # its own checkpoints: on disk (not rotated out by the refused files), of this run, hashing to what it reported,
    # finite
    _, _, replica = build(TrainConfig(model="tiny-llama", table_log2=20, max_length=32, lr=1e-3, progress=False))
    expect = {"run_id": "foreign", "initial_sha256": report["manifest"]["initial_sha256"]}
    own = sorted(p for p in (ck / "foreign").glob("ckpt-*.safetensors"))
    assert [p.name for p in own] == ["ckpt-000000002.safetensors", "ckpt-000000004.safetensors"], own
    info = load_checkpoint(own[-1], replica.params, expect)
    assert info.sha256 == report["hashes"]["4"] == report["final_sha256"]
    assert all(torch.isfinite(t).all() for _, t in replica.params)
