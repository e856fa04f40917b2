"""Bad local input (issue 6): a clear one-line error (exit code 2, no traceback) or a skipped
contribution, never a corrupted checkpoint. Real CLI processes and a tiny model.

Already covered elsewhere, not repeated here: negative/NaN lr, zero steps, non-numeric eps,
unknown codec, missing dataset and model paths, an unmatched --trainable (tests/unit/test_train.py);
a missing text column, empty csv with a header, bad label columns and words, templates
(tests/unit/test_models_data.py); bad config files and ONEBYTE_ variables (tests/unit/test_config.py);
truncated, flipped and foreign checkpoints through the API (tests/unit/test_train.py); bad
--initial-peers (tests/swarm/test_swarm.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onebyte.peer.checkpoint import load_checkpoint
from onebyte.peer.train import TrainConfig, build

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ["--model", "tiny-llama", "--steps", "2", "--eval-size", "4", "--no-progress", "--table-log2", "20", "--max-length", "32"]
TINY_PEER = ["--model", "tiny-llama", "--table-log2", "20", "--max-length", "32", "--lr", "1e-3", "--round-seconds", "2",
             "--contribs-per-round", "2", "--batch-size", "4", "--start-delay", "3", "--no-progress", "--threads", "1"]


def onebyte(*args: str, launcher: tuple[str, ...] = ("-m", "onebyte.peer.cli"), timeout: float = 240, env: dict | None = None):
    return subprocess.run([sys.executable, *launcher, "--log-level", "WARNING", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=os.environ | (env or {}))


def one_clear_error(r: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2, no traceback, exactly one error line, last, naming the problem."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], lines[-5:]
    assert message in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "zero_bytes.csv").write_text("")
    (d / "no_text.csv").write_text("text,label\n" + ",1\n,0\n" * 6)
    (d / "one_row.csv").write_text('text,label\n"good",1\n')
    (d / "two_rows.csv").write_text('text,label\n"good",1\n"bad",0\n')
    (d / "garbage.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    (d / "bad_allow.txt").write_text("# members\nzzzz\n")
    (d / "a_file").write_text("")
    return d


# -- one clear line --------------------------------------------------------------------------------------------

BAD_TRAIN = [
    ("zero_bytes_file", ["--dataset", "{d}/zero_bytes.csv"], "could not read"),
    ("no_text_in_any_row", ["--dataset", "{d}/no_text.csv"], "is empty"),
    ("one_row", ["--dataset", "{d}/one_row.csv"], "too few"),
    ("lm_task_nothing_to_predict", ["--dataset", "{d}/two_rows.csv", "--task", "lm", "--eval-size", "1"], "no text of at least 2 tokens"),
    ("bad_regex", ["--trainable", "("], "bad parameter pattern '('"),
    ("table_too_large", ["--table-log2", "40"], "table_log2 must be in [12, 31]"),
    ("model_is_a_file", ["--model", "{d}/a_file"], "is a file but not a .gguf file"),
    ("hub_model_that_does_not_exist", ["--model", "nobody-xyz/no-such-model"], "not found"),
    ("empty_label_word", ["--label-words", ","], "tokenizes to nothing"),
    ("checkpoint_under_a_file", ["--checkpoint", "{d}/a_file/ck.safetensors"], "a_file"),
    ("zero_eps", ["--eps", "0"], "--eps"),
    ("negative_weight_decay", ["--weight-decay", "-1"], "--weight-decay"),
    ("zero_batch", ["--batch-size", "0"], "--batch-size"),
    ("zero_contribs", ["--contribs", "0"], "--contribs"),
    ("inf_lr", ["--lr", "inf"], "--lr"),
    ("report_is_a_folder", ["--report", "{d}"], "--report: "),
    ("report_under_a_file", ["--report", "{d}/a_file/sub/report.json"], "is not a folder"),
]


@pytest.mark.parametrize("args, message", [b[1:] for b in BAD_TRAIN], ids=[b[0] for b in BAD_TRAIN])
def test_bad_train_input_is_one_clear_line(files, args, message):
    r = onebyte("train", *TINY_TRAIN, *[a.format(d=files) for a in args], env={"HF_HUB_OFFLINE": "1"})
    one_clear_error(r, message)


BAD_PEER = [
    ("shard_out_of_range", ["--shard", "3/2"], "--shard: expected I/N"),
    ("shard_not_a_fraction", ["--shard", "half"], "--shard: expected I/N"),
    ("garbage_identity_file", ["--identity", "{d}/garbage.pem"], "is not a PEM Ed25519 private key"),
    ("identity_is_a_folder", ["--identity", "{d}"], "Is a directory"),
    ("bad_key_in_allowlist", ["--allowed-peers", "{d}/bad_allow.txt"], "expected 1..64 public keys"),
    ("missing_allowlist", ["--allowed-peers", "{d}/nope.txt"], "cannot read"),
    ("missing_initial_peers_file", ["--initial-peers-file", "{d}/nope.txt"], "--initial-peers-file"),
    ("empty_data_shard", ["--dataset", "{d}/two_rows.csv", "--shard", "5/6"], "shard 5/6 of 1 training examples is empty"),
    ("negative_round_seconds", ["--round-seconds", "-2"], "--round-seconds"),
    ("round_log_is_a_folder", ["--round-log", "{d}"], "--round-log: "),
    ("run_creator_not_a_key", ["--run-creator", "c0ffee"], "expected a public key of 64 hex characters"),
    ("report_under_a_file", ["--report", "{d}/a_file/report.json"], "is not a folder"),
]


@pytest.mark.parametrize("args, message", [b[1:] for b in BAD_PEER], ids=[b[0] for b in BAD_PEER])
def test_bad_peer_input_is_one_clear_line(files, args, message):
    r = onebyte("peer", "--run-id", "bad-input", "--new-run", *TINY_PEER, "--rounds", "1", *[a.format(d=files) for a in args])
    one_clear_error(r, message)


def test_an_invalid_run_id_is_one_clear_line(files):
    r = onebyte("peer", "--run-id", "my run!", "--new-run", *TINY_PEER, "--rounds", "1")
    one_clear_error(r, "run")


# -- non-finite losses: the contribution is skipped, never the weights ------------------------------------------

@pytest.mark.parametrize("every", [2, 1])
def test_non_finite_losses_skip_contributions_and_the_checkpoint_stays_intact(tmp_path, every):
    """Every `every`-th estimate sees a NaN, +inf or -inf loss (every=1: all of them)."""
    ck, rep = tmp_path / "ck.safetensors", tmp_path / "r.json"
    r = onebyte("train", "--model", "tiny-llama", "--steps", "6", "--contribs", "2", "--batch-size", "4", "--eval-size", "8", "--no-progress",
                "--table-log2", "20", "--max-length", "32", "--lr", "1e-3", "--checkpoint", str(ck), "--report", str(rep),
                launcher=("-m", "tests.adversaries.hostile_peer", "nonfinite", str(every)))
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
    save_checkpoint(run_dir / "ckpt-000000009.safetensors", gpt2.params, 9, {"run_id": run_id, "initial_sha256": initial})
    t = onebyte("train", "--model", "tiny-llama", "--steps", "1", "--eval-size", "4", "--no-progress", "--table-log2", "20", "--max-length", "32",
                "--checkpoint", str(run_dir / "ckpt-000000008.safetensors"))
    assert t.returncode == 0, t.stderr[-2000:]
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_swarm_peer_with_foreign_checkpoints_and_non_finite_losses(tmp_path):
    """A swarm peer whose checkpoint dir holds checkpoints of another model and of another run (under
    names of rounds it has not reached) and whose loss is non-finite on every third estimate: it
    refuses the files (moved aside, untouched), starts from the run's initial weights, skips the
    bad contributions, publishes only finite codes, and its own checkpoints stay on disk, intact."""
    ck, rep = tmp_path / "ck", tmp_path / "r.json"
    foreign = _foreign_checkpoints(ck / "foreign", "foreign")
    r = onebyte("peer", "--run-id", "foreign", "--new-run", *TINY_PEER, "--rounds", "5", "--hash-every", "2", "--checkpoint-dir", str(ck),
                "--checkpoint-interval", "0", "--report", str(rep), launcher=("-m", "tests.adversaries.hostile_peer", "nonfinite", "3"))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(rep.read_text())
    # the foreign checkpoints: refused, moved aside byte for byte, never resumed from
    assert "not resuming from ckpt-000000009.safetensors" in r.stderr and "not resuming from ckpt-000000008.safetensors" in r.stderr
    assert "belongs to another model" in r.stderr and "is for run_id" in r.stderr
    assert report["checkpoints_rejected"] == 2 and "resumed from" not in r.stderr
    for name, data in foreign.items():
        assert (ck / "foreign" / f"{name}.refused").read_bytes() == data
    # the non-finite losses: skipped, and what was published is what was applied
    assert report["skipped_nonfinite"] >= 1 and report["contributions_published"] >= 1
    assert report["contributions_applied_local"] == report["contributions_published"]
    assert report["rounds_applied"] == 5 and report["final_sha256"] == report["hashes"]["4"] != report["manifest"]["initial_sha256"]
    # its own checkpoints: on disk (not rotated out by the refused files), of this run, hashing to what it reported, finite
    _, _, replica = build(TrainConfig(model="tiny-llama", table_log2=20, max_length=32, lr=1e-3, progress=False))
    expect = {"run_id": "foreign", "initial_sha256": report["manifest"]["initial_sha256"]}
    own = sorted(p for p in (ck / "foreign").glob("ckpt-*.safetensors"))
    assert [p.name for p in own] == ["ckpt-000000002.safetensors", "ckpt-000000004.safetensors"], own
    info = load_checkpoint(own[-1], replica.params, expect)
    assert info.sha256 == report["hashes"]["4"] == report["final_sha256"]
    assert all(torch.isfinite(t).all() for _, t in replica.params)
