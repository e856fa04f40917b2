"""Single-peer training through the public API, in-process, on tiny config-built models. Through the
real CLI (`onebyte train` in a child process): tests/cli/test_train_cli.py."""

from __future__ import annotations

import json

import pytest
import torch

from onebyte.peer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from onebyte.peer.train import TrainConfig, build, train


def tiny_cfg(**kw) -> TrainConfig:
    # drugreview (72% positive): a tiny random model can lower its held-out loss in 40 steps by learning the label prior
    base = dict(
        model="tiny-llama",
        dataset="drugreview",
        steps=40,
        lr=1e-3,
        eps=1e-3,
        batch_size=16,
        eval_size=64,
        progress=False,
        table_log2=20,
    )
    return TrainConfig(**(base | kw))


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


def test_float32_codec_baseline_runs_and_differs_from_bytes():
    a = train(tiny_cfg(steps=5, eval_size=16))
    b = train(tiny_cfg(steps=5, eval_size=16, codec="float32"))
    assert a["final_sha256"] != b["final_sha256"]


def test_bf16_training_keeps_bf16_weights_and_trains_a_subset():
    loaded, task, replica = build(tiny_cfg(dtype="bfloat16", trainable=r"layers\.0\."))
    assert all(t.dtype == torch.bfloat16 for _, t in replica.params)
    assert all(n.startswith("model.layers.0.") for n, _ in replica.params)
    frozen = {n: p.clone() for n, p in loaded.model.named_parameters() if not n.startswith("model.layers.0.")}
    report = train(
        tiny_cfg(dtype="bfloat16", trainable=r"layers\.0\.", steps=5, eval_size=16), built=(loaded, task, replica)
    )
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
