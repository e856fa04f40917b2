"""Issue 12: the built-in tasks, the bias-only line and the frozen trunk, in-process. Getting a trained
model out of a real tiny swarm: tests/swarm/test_export.py; bad export and eval input:
tests/cli/test_export_cli.py."""

from __future__ import annotations

import numpy as np
import pytest

from onebyte.tasks import bias_only_line, classification_scores, load_model, load_task
from onebyte.tasks.builtin import BUILTIN_TASKS


@pytest.fixture(scope="module")
def tok():
    return load_model("tiny-llama").tokenizer  # the SmolLM2 tokenizer


# -- the built-in tasks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, num_train, eval_counts, train_counts",
    [
        ("mr", 10068, [250, 250], [5076, 4992]),
        ("trec", 4881, [8, 107, 116, 113, 76, 80], [78, 1046, 1129, 1102, 748, 778]),
        ("drugreview", 546, [95, 248], [161, 385]),
    ],
)
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
    if (
        name != "drugreview"
    ):  # split by onebyte, by hash (drugreview keeps its files' split, which shares a few reviews)
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
    brute = max(
        0.5 * (np.mean(margin[labels == 0] <= t) + np.mean(margin[labels == 1] > t)) for t in np.linspace(0, 8, 801)
    )
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


# -- the frozen trunk -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, head, body",
    [
        ("tiny-llama", r"^model\.norm\.weight$", r"layers\.1\."),
        ("tiny-gpt2", r"^transformer\.ln_f\.", r"h\.1\."),
        # the last block's feed-forward half (2-D matrices) is head too; its attention is not
        (
            "tiny-llama",
            r"^model\.norm\.weight$|layers\.1\.(post_attention_layernorm|mlp)\.",
            r"layers\.1\.(self_attn|mlp)\.",
        ),
        ("tiny-gpt2", r"^transformer\.ln_f\.|h\.1\.(ln_2|mlp)\.", r"h\.1\.(ln_1|mlp)\."),
    ],
    ids=["llama-norm", "gpt2-norm", "llama-feed-forward", "gpt2-feed-forward"],
)
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
    assert (
        ev_cached["loss"] == pytest.approx(ev_full["loss"], abs=1e-5) and ev_cached["accuracy"] == ev_full["accuracy"]
    )
    # a trainable set that reaches into the trunk gets no cache
    _, task, _ = build(TrainConfig(model=model, trainable=body, max_length=32, table_log2=20))
    assert task.trunk is None
