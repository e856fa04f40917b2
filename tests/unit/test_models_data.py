"""Model loading (onebyte.tasks.loading and its helpers) and tasks (onebyte.tasks.data): real objects, no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from onebyte.tasks import model_cache
from onebyte.tasks.data import Batch, DataError, load_task
from onebyte.tasks.loaded_model import LoadedModel, ModelLoadError, trainable_parameters
from onebyte.tasks.loading import load_model

REPO = Path(__file__).resolve().parents[2]


def state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_HASH_SCRIPT = r"""
import hashlib, json, sys, torch
from onebyte.tasks.loading import load_model
def sha(m):
    h = hashlib.sha256()
    for name, t in sorted(m.state_dict().items()):
        h.update(name.encode()); h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
torch.manual_seed(int(sys.argv[1]))  # the caller's RNG state must not matter
print(json.dumps({name: sha(load_model(name, init_seed=7).model) for name in ("tiny-llama", "tiny-gpt2")}))
"""


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def tiny_gpt2() -> LoadedModel:
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def drug(tiny):
    return load_task("drugreview", tokenizer=tiny.tokenizer)


# ------------------------------------------------------------------------------------ models


def test_tiny_init_identical_across_processes():
    # A fresh interpreter (different RNG state, own imports) builds the same bytes as this one.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _HASH_SCRIPT, "1"], env=env, cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    other = json.loads(proc.stdout.strip().splitlines()[-1])
    torch.manual_seed(12345)
    here = {name: state_sha256(load_model(name, init_seed=7).model) for name in other}
    assert here == other
    assert other["tiny-llama"] != other["tiny-gpt2"]
    assert state_sha256(load_model("tiny-llama", init_seed=8).model) != here["tiny-llama"]
    # a cast is a pure function of the float32 weights
    bf = load_model("tiny-gpt2", init_seed=7, dtype="bfloat16").model
    ref = load_model("tiny-gpt2", init_seed=7).model.to(torch.bfloat16)
    assert state_sha256(bf) == state_sha256(ref)


def test_cache_folder_written_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBYTE_CACHE", str(tmp_path / "cache"))
    assert model_cache.cache_root() == tmp_path / "cache"
    final = model_cache.models_dir() / "thing"
    final.parent.mkdir(parents=True)
    calls = []

    def writer(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.2)  # let the other threads pile up on the lock
        (tmp / "payload.txt").write_text("hello")

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: model_cache.build_cached(final, writer), range(4)))
    assert outs == [final] * 4 and len(calls) == 1
    assert (final / "payload.txt").read_text() == "hello" and model_cache.is_complete(final)
    assert sorted(p.name for p in final.parent.iterdir()) == [".thing.lock", "thing"]
    # losing a rename race to a complete folder keeps the winner's folder
    loser = final.parent / ".thing.tmp-x"
    loser.mkdir()
    (loser / "payload.txt").write_text("late")
    model_cache.publish(loser, final)
    assert not loser.exists() and (final / "payload.txt").read_text() == "hello"


def test_loaded_model_contract(tiny):
    assert tiny.kind == "causal-lm" and tiny.name == "tiny-llama"
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    assert tiny.tokenizer.pad_token_id is not None and tiny.tokenizer.padding_side == "left"
    assert tiny.model.config.vocab_size == len(tiny.tokenizer) == 49152
    assert tiny.model.lm_head.weight is tiny.model.model.embed_tokens.weight  # tied like SmolLM2
    assert tiny.num_parameters() < 4_000_000
    rng = torch.get_rng_state()
    bf = load_model("tiny-llama", dtype="bfloat16")
    assert torch.equal(rng, torch.get_rng_state())  # loading leaves the global RNG alone
    assert {p.dtype for p in bf.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("tiny-llama", dtype="float8")
    with pytest.raises(ModelLoadError, match="kind"):
        load_model("tiny-llama", kind="seq2seq")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="could not move"):
            load_model("tiny-gpt2", device="cuda")


def test_trainable_parameters_pattern_and_tied_dedup(tiny):
    every = trainable_parameters(tiny.model, None)
    names = [n for n, _ in every]
    assert names == sorted(names)
    assert len({id(p) for _, p in every}) == len(every) == len(list(tiny.model.parameters()))
    # the tied embedding appears once, under the first of its names in sorted order
    assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names
    assert trainable_parameters(tiny.model, r"embed_tokens")[0][0] == "model.embed_tokens.weight"
    layer0 = trainable_parameters(tiny, r"layers\.0\.")
    assert layer0 and all(".layers.0." in n for n, _ in layer0)
    assert [n for n, _ in trainable_parameters(tiny.model, r"\.(q|v)_proj\.")] == [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
    ]
    with pytest.raises(ValueError, match="no parameter name matches"):
        trainable_parameters(tiny.model, r"lora_")


def test_bad_model_names_fail_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="'foo/bar' not found") as err:
        load_model("foo/bar")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "no" / "such" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither a config.json nor a .gguf"):
        load_model(str(tmp_path / "empty"))
    # not offline, but the endpoint refuses connections: still quick
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_model("nobody/nothing-here")
    assert time.perf_counter() - t0 < 10
    assert issubclass(ModelLoadError, ValueError)


def test_local_folder_round_trip(tmp_path, tiny):
    folder = tmp_path / "tiny"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    again = load_model(str(folder))
    assert again.kind == "causal-lm" and type(again.model).__name__ == "LlamaForCausalLM"
    assert state_sha256(again.model) == state_sha256(tiny.model)
    assert all(not p.requires_grad for p in again.model.parameters()) and not again.model.training
    cls_a = load_model(str(folder), kind="seq-cls", num_labels=3, init_seed=5)
    cls_b = load_model(str(folder), kind="seq-cls", num_labels=3, init_seed=5)
    assert type(cls_a.model).__name__ == "LlamaForSequenceClassification"
    assert cls_a.model.score.weight.shape[0] == 3
    assert torch.equal(cls_a.model.score.weight, cls_b.model.score.weight)  # fresh head, seeded
    assert torch.equal(cls_a.model.model.embed_tokens.weight, tiny.model.model.embed_tokens.weight)


# ------------------------------------------------------------------------------------ tasks


def test_drugreview_binary_counts_and_prompts(drug, tiny):
    d = drug.describe()
    assert drug.kind == "classification"
    assert (drug.num_train, drug.num_eval) == (546, 343)  # 600 / 379 rows minus neutral
    assert d["class_counts"] == {"train": [161, 385], "eval": [95, 248]}
    assert d["dropped"] == {"neutral": 90}
    assert d["label_words"] == [" negative", " positive"]
    json.dumps(d)
    tok = tiny.tokenizer
    cue = tok("\nSentiment:", add_special_tokens=False)["input_ids"]
    batch = drug.train_batch(range(drug.num_train))
    assert batch.input_ids.shape[1] <= 64
    for row in range(len(batch)):
        assert batch.input_ids[row, -len(cue) :].tolist() == cue
    assert batch.attention_mask[:, -1].all()  # left padding: the last position is always real
    texts = [drug.text(i) for i in range(20)] + [drug.text(i, "eval") for i in range(20)]
    assert all(t.startswith("Review: ") and t.endswith("\nSentiment:") for t in texts)
    assert not any("&#039;" in t or "&amp;" in t or t.startswith('Review: "') for t in texts)
    again = load_task("drugreview", tokenizer=tok)
    assert again.describe() == d and again.fingerprint() == drug.fingerprint()
    lm = load_task("drugreview", tokenizer=tok, task="lm")
    assert (lm.num_train, lm.num_eval) == (600, 379)


def test_classification_loss_and_eval(drug, tiny, tiny_gpt2):
    batch = drug.train_batch([0, 1, 2, 3, 4, 5, 6, 7])
    assert isinstance(batch, Batch) and batch.labels.shape == (8,)
    for lm in (tiny, tiny_gpt2):
        with torch.no_grad():
            loss = drug.loss(lm.model, batch)
        assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
        res = drug.evaluate(lm, batch_size=12, limit=24)
        assert res["n"] == 24 and 0.0 <= res["accuracy"] <= 1.0 and res["loss"] > 0
    seq = load_model("tiny-gpt2", kind="seq-cls")
    with torch.no_grad():
        assert torch.isfinite(drug.loss(seq.model, batch))


@pytest.mark.parametrize("which", ["tiny", "tiny_gpt2"])
def test_left_padding_matches_unpadded(drug, which, request):
    # Positions come from the mask (GPT-2's learned absolute positions, Llama's rotary ones):
    # a padded batch must score each example as it scores it alone.
    model = request.getfixturevalue(which).model
    batch = drug.train_batch([3, 0, 7])
    assert (batch.attention_mask == 0).any()
    with torch.no_grad():
        together = drug.class_logits(model, batch)
        alone = torch.cat([drug.class_logits(model, drug.train_batch([i])) for i in (3, 0, 7)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_loss_goes_through_module_forward(drug, tiny):
    batch = drug.train_batch([0, 1, 2, 3])
    with torch.no_grad():
        base = drug.loss(tiny.model, batch)
        handle = tiny.model.lm_head.register_forward_hook(lambda m, i, o: o * 3.0)
        try:
            hooked = drug.loss(tiny.model, batch)
        finally:
            handle.remove()
        assert torch.equal(drug.loss(tiny.model, batch), base)
    assert not torch.equal(hooked, base)


def test_lm_task_loss(tiny):
    lm = load_task("drugreview", tokenizer=tiny.tokenizer, task="lm", max_length=32)
    batch = lm.train_batch([0, 1, 2])
    assert batch.labels.shape == batch.input_ids.shape
    assert (batch.labels[batch.attention_mask == 0] == -100).all()
    with torch.no_grad():
        loss = lm.loss(tiny.model, batch)
        # a single unpadded sequence agrees with transformers' own causal-LM loss
        one = lm.train_batch([0])
        ref = tiny.model(input_ids=one.input_ids, labels=one.input_ids).loss
        torch.testing.assert_close(lm.loss(tiny.model, one), ref, rtol=1e-5, atol=1e-5)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss > 5  # random model
    res = lm.evaluate(tiny.model, batch_size=8, limit=10)
    assert res["n"] == 10 and res["tokens"] > 10 and res["loss"] > 0


def _write_csv(path: Path, rows: list[tuple[str, str]], header=("sentence", "label")) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_local_csv_string_labels(tmp_path, tiny):
    rows = [(f"review number {i} was {'great' if i % 3 else 'awful'}", "good" if i % 3 else "bad") for i in range(50)]
    path = tmp_path / "reviews.csv"
    _write_csv(path, rows)
    task = load_task(str(path), tokenizer=tiny.tokenizer, text_column="sentence", template="Text: {text}\nQuality:")
    d = task.describe()
    assert (task.num_train, task.num_eval) == (40, 10)  # 20% held out
    assert d["label_words"] == [" bad", " good"] and d["label_mapping"] == {"bad": 0, "good": 1}
    assert d["source"] == {"type": "files", "train_files": ["reviews.csv"], "eval_files": None}
    # label_words order decides the classes when the words name the labels
    flipped = load_task(str(path), tokenizer=tiny.tokenizer, text_column="sentence", label_words=[" good", " bad"])
    assert flipped.describe()["label_mapping"] == {"bad": 1, "good": 0}
    # the split is a deterministic function of split_seed
    same = load_task(str(path), tokenizer=tiny.tokenizer, text_column="sentence", template="Text: {text}\nQuality:")
    other = load_task(
        str(path),
        tokenizer=tiny.tokenizer,
        text_column="sentence",
        template="Text: {text}\nQuality:",
        split_seed=1,
        eval_size=5,
    )
    assert same.fingerprint() == task.fingerprint()
    assert other.num_eval == 5 and other.fingerprint() != task.fingerprint()
    assert [task.text(i, "eval") for i in range(3)] == [same.text(i, "eval") for i in range(3)]
    with torch.no_grad():
        assert torch.isfinite(task.loss(tiny.model, task.train_batch([0, 1, 2])))


def test_local_jsonl_and_split_folder(tmp_path, tiny):
    recs = [{"text": f"sample {i} " * (1 + i % 4), "label": i % 3} for i in range(30)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    words = [" red", " green", " blue"]
    task = load_task(str(path), tokenizer=tiny.tokenizer, label_words=words, eval_size=6)
    assert (task.num_train, task.num_eval) == (24, 6)
    assert sorted(set(task.labels("train"))) == [0, 1, 2]
    res = task.evaluate(tiny.model, batch_size=4)
    assert res["n"] == 6 and 0 <= res["accuracy"] <= 1
    # a folder with train / test files keeps the given splits
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in recs[:20]))
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in recs[20:]))
    given = load_task(str(folder), tokenizer=tiny.tokenizer, label_words=words)
    assert (given.num_train, given.num_eval) == (20, 10)
    assert given.describe()["source"]["eval_files"] == ["test.jsonl"]
    lm = load_task(str(folder), tokenizer=tiny.tokenizer, task="lm")
    assert lm.kind == "lm" and lm.num_train == 20


def test_saved_datasets_folder(tmp_path, tiny):
    # the same DatasetDict path that hub datasets take, from a save_to_disk folder
    import datasets

    def part(n, start):
        return {
            "sentence": [f"example {i}" for i in range(start, start + n)],
            "label": [i % 2 for i in range(start, start + n)],
        }

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(part(12, 0)),
            "validation": datasets.Dataset.from_dict(part(4, 100)),
            "test": datasets.Dataset.from_dict({"sentence": ["x"] * 3, "label": [-1] * 3}),
        }
    )
    dd.save_to_disk(str(tmp_path / "sst"))
    task = load_task(str(tmp_path / "sst"), tokenizer=tiny.tokenizer, text_column="sentence")
    assert (task.num_train, task.num_eval) == (12, 4)  # validation preferred over a label-less test
    assert task.labels("eval") == [0, 1, 0, 1]
    assert task.describe()["label_words"] == [" negative", " positive"]


def test_data_errors(tmp_path, tiny):
    tok = tiny.tokenizer
    path = tmp_path / "d.csv"
    _write_csv(path, [("fine", "1"), ("bad", "0")] * 5, header=("sentence", "label"))
    with pytest.raises(DataError, match=r"no text column 'text'; its columns are: sentence, label"):
        load_task(str(path), tokenizer=tok)
    with pytest.raises(DataError, match="label column 'stars'"):
        load_task(str(path), tokenizer=tok, text_column="sentence", label_column="stars")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="empty"):
        load_task(str(empty), tokenizer=tok)
    with pytest.raises(DataError, match="not found"):
        load_task(str(tmp_path / "missing.csv"), tokenizer=tok)
    three = tmp_path / "three.jsonl"
    three.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 3}) for i in range(12)))
    with pytest.raises(DataError, match="outside"):
        load_task(str(three), tokenizer=tok, label_words=[" no", " yes"])
    with pytest.raises(DataError, match="pass label_words"):
        load_task(str(three), tokenizer=tok)
    with pytest.raises(DataError, match="too few label words"):
        load_task(str(path), tokenizer=tok, text_column="sentence", label_words=[" yes"])
    with pytest.raises(DataError, match="distinct"):
        load_task(str(path), tokenizer=tok, text_column="sentence", label_words=[" good", " good!"])
    with pytest.raises(DataError, match=r"\{text\}"):
        load_task(tokenizer=tok, template="no placeholder")
    with pytest.raises(DataError, match="unknown task"):
        load_task(tokenizer=tok, task="regression")
    assert issubclass(DataError, ValueError)


@pytest.mark.slow
def test_smollm2_real_model_classifies_drugreview():
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m")
    assert time.perf_counter() - t0 < 300
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert 130e6 < lm.num_parameters() < 140e6
    task = load_task("drugreview", tokenizer=lm.tokenizer)
    with torch.no_grad():
        loss = task.loss(lm.model, task.train_batch(range(8)))
    assert torch.isfinite(loss) and 0 < loss < 10
    res = task.evaluate(lm.model, batch_size=8, limit=16)
    assert res["n"] == 16 and 0 <= res["accuracy"] <= 1 and res["loss"] < 10
    t1 = time.perf_counter()
    load_model("smollm2-135m")
    assert time.perf_counter() - t1 < 15  # second load comes from the cached HF folder
