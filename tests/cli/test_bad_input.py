"""Bad local input (issue 6): a clear one-line error (exit code 2, no traceback) or a skipped
contribution, never a corrupted checkpoint. Real CLI processes and a tiny model. Skipped contributions
(non-finite losses, tests/adversaries/hostile_peer.py): tests/adversaries/test_nonfinite_losses.py.

Already covered elsewhere, not repeated here: negative/NaN lr, zero steps, non-numeric eps,
unknown codec, missing dataset and model paths, an unmatched --trainable (tests/cli/test_train_cli.py);
a missing text column, empty csv with a header, bad label columns and words, templates
(tests/unit/test_models_data.py); bad config files and ONEBYTE_ variables (tests/unit/test_config.py);
truncated, flipped and foreign checkpoints through the API (tests/unit/test_train.py); bad
--initial-peers (tests/swarm/test_swarm.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import TINY_PEER, TINY_TRAIN, one_clear_error, onebyte


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
    (
        "lm_task_nothing_to_predict",
        ["--dataset", "{d}/two_rows.csv", "--task", "lm", "--eval-size", "1"],
        "no text of at least 2 tokens",
    ),
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
    (
        "empty_data_shard",
        ["--dataset", "{d}/two_rows.csv", "--shard", "5/6"],
        "shard 5/6 of 1 training examples is empty",
    ),
    ("negative_round_seconds", ["--round-seconds", "-2"], "--round-seconds"),
    ("round_log_is_a_folder", ["--round-log", "{d}"], "--round-log: "),
    ("run_creator_not_a_key", ["--run-creator", "c0ffee"], "expected a public key of 64 hex characters"),
    ("report_under_a_file", ["--report", "{d}/a_file/report.json"], "is not a folder"),
]


@pytest.mark.parametrize("args, message", [b[1:] for b in BAD_PEER], ids=[b[0] for b in BAD_PEER])
def test_bad_peer_input_is_one_clear_line(files, args, message):
    r = onebyte(
        "peer", "--run-id", "bad-input", "--new-run", *TINY_PEER, "--rounds", "1", *[a.format(d=files) for a in args]
    )
    one_clear_error(r, message)


def test_an_invalid_run_id_is_one_clear_line(files):
    r = onebyte("peer", "--run-id", "my run!", "--new-run", *TINY_PEER, "--rounds", "1")
    one_clear_error(r, "run")
