"""Single-peer training through the public API and the real CLI, on tiny config-built models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onebyte.peer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from onebyte.peer.train import TrainConfig, build, train

ROOT = Path(__file__).resolve().parents[2]


def tiny_cfg(**kw) -> TrainConfig:
    # drugreview (72% positive): a tiny random model can lower its held-out loss in 40 steps by learning the label prior
    base = dict(model="tiny-llama", dataset="drugreview", steps=40, lr=1e-3, eps=1e-3, batch_size=16, eval_size=64, progress=False, table_log2=20)
    return TrainConfig(**(base | kw))


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onebyte.peer.cli", "--log-level", "WARNING", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_training_lowers_held_out_loss_and_reports_everything(tmp_path):
    report = train(tiny_cfg(report=str(tmp_path / "r.json"), checkpoint=str(tmp_path / "ck.safetensors")))
    assert report["eval_after"]["loss"] < report["eval_before"]["loss"] - 0.01
    assert report["contributions_made"] == 40 and len(report["losses"]) == 40
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["final_sha256"] == report["final_sha256"] != report["initial_sha256"]
    assert on_disk["config"]["lr"] == 1e-3 and "task" in on_disk
    # the checkpoint holds exactly the trained weights
    _, _, replica = build(tiny_cfg())
    assert replica.sha256() == report["initial_sha256"]
    info = load_checkpoint(tmp_path / "ck.safetensors", replica.params)
    assert info.round == 40 and replica.sha256() == report["final_sha256"] == info.sha256


def test_same_seed_same_hash_across_processes_and_other_seed_differs(tmp_path):
    hashes = []
    for seed in (3, 3, 4):
        r = cli("train", "--model", "tiny-llama", "--steps", "5", "--lr", "1e-3", "--batch-size", "8", "--eval-size", "16",
                "--seed", str(seed), "--no-progress", "--table-log2", "20", "--report", str(tmp_path / f"{seed}.json"))
        assert r.returncode == 0, r.stderr
        hashes.append(json.loads((tmp_path / f"{seed}.json").read_text())["final_sha256"])
    assert hashes[0] == hashes[1] != hashes[2]


def test_float32_codec_baseline_runs_and_differs_from_bytes():
    a = train(tiny_cfg(steps=5, eval_size=16))
    b = train(tiny_cfg(steps=5, eval_size=16, codec="float32"))
    assert a["final_sha256"] != b["final_sha256"]


def test_bf16_training_keeps_bf16_weights_and_trains_a_subset():
    loaded, task, replica = build(tiny_cfg(dtype="bfloat16", trainable=r"layers\.0\."))
    assert all(t.dtype == torch.bfloat16 for _, t in replica.params)
    assert all(n.startswith("model.layers.0.") for n, _ in replica.params)
    frozen = {n: p.clone() for n, p in loaded.model.named_parameters() if not n.startswith("model.layers.0.")}
    report = train(tiny_cfg(dtype="bfloat16", trainable=r"layers\.0\.", steps=5, eval_size=16), built=(loaded, task, replica))
    assert report["final_sha256"] != report["initial_sha256"]
    for n, p in loaded.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_checkpoint_corruption_truncation_and_foreign_model_are_detected(tmp_path):
    _, _, replica = build(tiny_cfg())
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, replica.params, 7, {"model": "tiny-llama"})
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind
    before = replica.sha256()
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-5] ^= 0x01
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    for bad, msg in (("trunc", "unreadable"), ("flip", "corrupted"), ("missing", "does not exist")):
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(tmp_path / f"{bad}.safetensors", replica.params)
    other = build(tiny_cfg(model="tiny-gpt2"))[2]
    with pytest.raises(CheckpointError, match="another model"):
        load_checkpoint(path, other.params)
    assert replica.sha256() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--steps", "0"], "--steps"),
        (["--eps", "abc"], "--eps"),
        (["--codec", "log9:1:1"], "unknown codec"),
        (["--dataset", "/nonexistent/file.csv"], "nonexistent"),
        (["--model", "/nonexistent/model-folder"], "nonexistent"),
        (["--trainable", "no_such_param_xyz"], "no_such_param_xyz"),
    ],
)
def test_bad_input_gives_one_clear_line_not_a_traceback(args, message):
    base = ["train", "--model", "tiny-llama", "--steps", "1", "--eval-size", "8", "--no-progress"]
    r = cli(*base, *args, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_text_column_names_the_columns_that_exist(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("sentence,label\n" + "it was good,1\nit was bad,0\n" * 10)
    r = cli("train", "--model", "tiny-llama", "--dataset", str(f), "--steps", "1", "--no-progress")
    assert r.returncode == 2 and "sentence" in r.stderr and "Traceback" not in r.stderr
    r = cli("train", "--model", "tiny-llama", "--dataset", str(f), "--text-column", "sentence", "--steps", "2",
            "--label-words", " bad, good", "--eval-size", "4", "--no-progress")
    assert r.returncode == 0, r.stderr
