"""What a model is scored on: tokenized examples, a loss from the model's own forward, evaluation.

Two kinds of :class:`Task`:

* :class:`ClassificationTask` (``kind == "classification"``), as in MeZO: each example is a prompt,
  and a causal LM is scored on the next-token logits restricted to the first token of each label
  word (e.g. ``[" terrible", " great"]``); the loss is the cross-entropy against the label index.
  A sequence-classification model (``seq-cls``) is scored on its own head instead. Evaluation
  reports accuracy, balanced accuracy and the bias-only line (onebyte.tasks.metrics).
* :class:`LMTask` (``kind == "lm"``): causal LM loss over the text tokens, the mean over non-pad
  target tokens.

Everything the model computes goes through the model's own modules (``model(...)``), so
perturbations applied with forward hooks are seen.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from onebyte.tasks.metrics import classification_scores

IGNORE_INDEX = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long, left-padded
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    labels: torch.Tensor  # classification: (B,) class index; lm: (B, T), -100 on padding
    keys: torch.Tensor | None = None  # (B,) which example each row is (split and index), for a FrozenTrunk cache

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            None if self.keys is None else self.keys.to(device),
        )


# --------------------------------------------------------------------------------------------
# model plumbing (all computation through the model's own modules)


def _unwrap(model):
    from onebyte.tasks.loaded_model import LoadedModel

    return model.model if isinstance(model, LoadedModel) else model


def _forward_params(model: torch.nn.Module) -> frozenset[str]:
    cls = type(model)
    cached = _FORWARD_PARAMS.get(cls)
    if cached is None:
        try:
            params = inspect.signature(cls.forward).parameters
            cached = frozenset(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
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
        self.trunk = None  # a FrozenTrunk when only the head is trained (onebyte.tasks.trunk): see use_trunk

    def use_trunk(self, trunk) -> None:
        """Score through a FrozenTrunk: the same loss, with the frozen trunk run once per example."""
        self.trunk = trunk

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
        keys = torch.tensor([(split == "eval") << 40 | i for i in indices], dtype=torch.long)
        return Batch(ids, mask, torch.tensor([labels[i] for i in indices], dtype=torch.long), keys)

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
        if self.trunk is not None and batch.keys is not None and model is self.trunk.model:
            return self.trunk.class_logits(batch, self.label_token_ids)
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
        """Loss, accuracy, balanced accuracy, predicted shares and the bias-only lines."""
        logits, labels = [], []
        with torch.no_grad():
            for batch in self.eval_batches(batch_size, limit):
                logits.append(self.class_logits(model, batch).double().cpu())
                labels.append(batch.labels)
        if not logits:
            return {"loss": math.nan, "accuracy": math.nan, "balanced_accuracy": math.nan, "n": 0}
        all_logits, all_labels = torch.cat(logits), torch.cat(labels)
        loss = float(F.cross_entropy(all_logits, all_labels))
        return {"loss": loss, **classification_scores(all_logits.numpy(), all_labels.numpy()), "n": len(all_labels)}


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
        return {
            "loss": loss,
            "n": n,
            "tokens": tokens,
            "perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan,
        }
