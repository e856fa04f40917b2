"""Getting a trained model out of a real tiny swarm (`onebyte export`, `onebyte eval`, issue 12),
loaded back with transformers. The tasks and bias-only line: tests/unit/test_tasks.py; bad export and
eval input: tests/cli/test_export_cli.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from onebyte.peer.checkpoint import load_checkpoint
from onebyte.tasks import load_model, load_task, trainable_parameters
from tests.support.swarm import ROOT, START, TINY, WAIT, Swarm


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onebyte.cli", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.long
def test_export_round_trip_from_a_swarm_loads_in_transformers_and_scores_as_the_peer_did(tmp_path):
    from transformers import AutoModelForCausalLM, pipeline

    rounds, ckdir = 16, tmp_path / "ck"
    with Swarm(tmp_path, in_process=True) as swarm:
        common = ["--run-id", "exp", "--rounds", str(rounds), "--batch-size", "4", "--threads", "1"]
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
            "--hash-every",
            "1",
            "--checkpoint-dir",
            str(ckdir),
            "--checkpoint-interval",
            "0",
            "--evaluate",
            "--eval-size",
            "24",
            "--eval-every",
            "4",
            "--eval-every-size",
            "8",
        )
        # a live run: join without contributing, catch up to its newest final round, export that
        swarm.wait_for_round("a", 5, timeout=300)
        live = _cli(
            "export",
            "--run-id",
            "exp",
            *[x for m in swarm.maddrs for x in ("--initial-peers", m)],
            "--out",
            str(tmp_path / "live"),
        )
        assert live.returncode == 0, live.stderr[-3000:]
        for name in "ab":
            assert swarm.wait(name, timeout=400) == 0, swarm.log(name)[-3000:]
        rep = swarm.report("a")
    live_info = json.loads((tmp_path / "live" / "onebyte_export.json").read_text())
    assert live_info["source"] == "live run" and live_info["round"] >= 5
    # exactly the swarm's weights at that round (a slow export may land after the peers' last round: the rounds after
    # it are empty, so the weights are those of the last one)
    assert live_info["sha256"] == rep["hashes"][str(min(live_info["round"], rounds - 1))]
    # the learning curve: every 4 rounds on a fixed subset, in the report and the round log
    assert [p["round"] for p in rep["eval_curve"]] == [3, 7, 11, 15] and all(p["n"] == 8 for p in rep["eval_curve"])
    log = [json.loads(x) for x in (tmp_path / "a.rounds.jsonl").read_text().splitlines()]
    assert [e["round"] for e in log if e.get("event") == "eval"] == [3, 7, 11, 15]

    out = tmp_path / "hf"
    r = _cli("export", "--checkpoint", str(ckdir), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((out / "onebyte_export.json").read_text())
    assert info["round"] == rounds - 1 and info["sha256"] == rep["final_sha256"]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (out / f).is_file(), f

    # transformers loads it as any Hugging Face folder, and its logits are the peer's
    hf = AutoModelForCausalLM.from_pretrained(str(out))
    peer = load_model("tiny-llama")
    params = trainable_parameters(peer.model)
    ck = load_checkpoint(sorted(ckdir.glob("exp/ckpt-*.safetensors"))[-1], params)
    assert ck.sha256 == rep["final_sha256"]
    task = load_task("mr", tokenizer=peer.tokenizer, max_length=32)
    batch = next(task.eval_batches(8))
    with torch.no_grad():
        ours = task.class_logits(peer.model, batch)
        torch.testing.assert_close(task.class_logits(hf, batch), ours, rtol=1e-5, atol=1e-5)
        assert torch.equal(
            task.class_logits(load_model(str(out)).model, batch), ours
        )  # through onebyte's loader: bit for bit
    text = pipeline("text-generation", model=str(out))("The film was", max_new_tokens=3, do_sample=False)[0][
        "generated_text"
    ]
    assert text.startswith("The film was")

    # onebyte eval of the exported folder scores it as the peer scored its own final weights
    ev = _cli("eval", str(out), "--eval-size", "24", "--json")
    assert ev.returncode == 0, ev.stderr[-3000:]
    got, want = json.loads(ev.stdout), rep["eval_after"]
    for k in ("accuracy", "balanced_accuracy", "bias_line_accuracy", "bias_line_balanced_accuracy", "n"):
        assert got[k] == want[k], k
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    table = _cli("eval", "--checkpoint", str(ckdir), "--eval-size", "24")
    assert (
        table.returncode == 0
        and "bias line balanced accuracy" in table.stdout
        and f"round {rounds - 1} of run exp" in table.stdout
    )
