"""Building a task from a dataset name: the entry point :func:`load_task`.

Datasets (``load_task(dataset=...)``):

* a built-in (onebyte.tasks.builtin): ``"mr"`` (the default), ``"trec"``, ``"drugreview"``, each
  with its own prompt, label words and fixed held-out split;
* a local file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``) or a folder of them, read
  through ``datasets``. Files whose names contain ``train`` and ``validation``/``valid``/``val``/
  ``dev``/``eval``/``test`` are used as the given splits; otherwise all files are concatenated
  (sorted by name) and split;
* a folder written by ``datasets``' ``save_to_disk``: its ``train`` split and its ``validation``
  (else ``test``) split, like a hub dataset;
* a hub dataset id (``"owner/name"``, or ``"owner/name:config"``) via ``datasets.load_dataset``.

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
counted in :meth:`Task.describe`. Everything is deterministic: the same arguments give the same
examples in the same order in any process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onebyte.tasks.builtin import BUILTIN_TASKS, DEFAULT_DATASET, BuiltinTask
from onebyte.tasks.labels import is_missing, label_words_and_mapping, norm_label
from onebyte.tasks.prompts import DEFAULT_TEMPLATE, PromptEncoder, first_tokens
from onebyte.tasks.sources import FILE_SUFFIXES, DataError, _hub_tables, _local_tables, _Table
from onebyte.tasks.splits import split_rows
from onebyte.tasks.task import Batch, ClassificationTask, LMTask, Task

__all__ = [
    "Batch",
    "ClassificationTask",
    "DataError",
    "DEFAULT_DATASET",
    "DEFAULT_TEMPLATE",
    "LMTask",
    "Task",
    "load_task",
]


# --------------------------------------------------------------------------------------------
# the entry point


def load_task(
    dataset: str = DEFAULT_DATASET,
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
        dataset: a built-in (``"mr"``, ``"trec"``, ``"drugreview"``), a local file or folder, or a
            hub id (``"name[:config]"``).
        tokenizer: the model's tokenizer (its pad token pads; padding is on the left).
        task: ``"classification"`` (default) or ``"lm"``.
        text_column / label_column: column names (built-ins ignore them).
        label_words: class ``i`` is scored on the first token of ``label_words[i]``.
        template: prompt with one ``{text}`` (default ``"Review: {text}\\nSentiment:"``).
        max_length: tokens per example; the text is cut so the prompt's cue stays whole.
        eval_size / train_size / split_seed: split sizes and the seed of the hash-based split.

    Raises :class:`DataError` (a ``ValueError``) with a clear message on any problem.
    """
    kind = _check_arguments(dataset, tokenizer, task, max_length, eval_size, train_size)
    tables = _read_tables(dataset, text_column, label_column)
    if tables.builtin is not None and kind == "classification":
        label_words = list(tables.builtin.label_words) if label_words is None else label_words
        template = tables.builtin.template if template is None else template
    where = f"dataset {dataset!r}"
    _check_columns(tables, kind, where)
    dropped: dict[str, int] = {}
    train_rows = _usable_rows(tables.train, tables, kind, dropped)
    eval_rows = _usable_rows(tables.eval, tables, kind, dropped) if tables.eval is not None else None
    train_rows, eval_rows, split = split_rows(train_rows, eval_rows, eval_size, train_size, split_seed, where)
    info: dict[str, Any] = {
        "task": kind,
        "dataset": tables.builtin.name if tables.builtin else dataset,
        "source": tables.source,
        "split": split,
        "dropped": dict(sorted(dropped.items())),
        "max_length": max_length,
        "tokenizer_vocab": len(tokenizer),
    }
    if kind == "lm":
        if template is not None or label_words is not None:
            raise DataError("the lm task uses only the text column: drop template/label_words")
        return _lm_task(tokenizer, train_rows, eval_rows, max_length, info, tables.text_column, where)
    return _classification_task(
        tokenizer, train_rows, eval_rows, label_words, template, max_length, info, tables, where
    )


# --------------------------------------------------------------------------------------------
# the steps of load_task


def _check_arguments(dataset, tokenizer, task, max_length, eval_size, train_size) -> str:
    """Refuse bad arguments before reading any data; the task kind (``classification`` or ``lm``)."""
    kind = {None: "classification", "classification": "classification", "cls": "classification", "lm": "lm"}.get(
        task if task is None else str(task).lower()
    )
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
    return kind


@dataclass
class _Tables:
    """A dataset's raw tables, the columns to read from them, and where they came from."""

    train: _Table
    eval: _Table | None  # None: one table, split by hash
    text_column: str
    label_column: str
    source: dict  # for describe()
    builtin: BuiltinTask | None


def _read_tables(dataset: str, text_column: str, label_column: str) -> _Tables:
    """A built-in by name first, then a local file or folder, then a hub id: the first that exists
    wins, so a local folder named like a hub id is read from disk. Built-ins have fixed columns."""
    builtin = BUILTIN_TASKS.get(dataset.strip().lower())
    if builtin is not None:
        train_rows, eval_rows, source = builtin.read(builtin)
        train_t, eval_t = (
            _Table([{"text": t, "label": y} for t, y in rs], ["text", "label"], [builtin.name])
            for rs in (train_rows, eval_rows)
        )
        return _Tables(train_t, eval_t, "text", "label", source, builtin)
    path = Path(dataset).expanduser()
    if path.exists():
        train_t, eval_t = _local_tables(dataset, path)
        source = {"type": "files", "train_files": train_t.files, "eval_files": eval_t.files if eval_t else None}
        return _Tables(train_t, eval_t, text_column, label_column, source, None)
    from onebyte.tasks.hub import looks_like_repo_id

    repo = dataset.partition(":")[0]
    if path.suffix.lower() in FILE_SUFFIXES:
        raise DataError(f"dataset file {dataset!r} not found")
    if not looks_like_repo_id(repo):
        raise DataError(
            f"unknown dataset {dataset!r}: not a built-in ({', '.join(BUILTIN_TASKS)}), "
            "nor a local file or folder (not found)"
        )
    train_t, eval_t, source = _hub_tables(dataset)
    return _Tables(train_t, eval_t, text_column, label_column, source, None)


def _require_column(table: _Table, column: str, what: str, where: str) -> None:
    if column not in table.columns:
        raise DataError(f"{where} has no {what} column {column!r}; its columns are: {', '.join(table.columns)}")


def _as_text(v: Any) -> str:
    if is_missing(v):
        return ""
    return str(v).strip()


def _check_columns(tables: _Tables, kind: str, where: str) -> None:
    """A missing column is named with the columns that do exist, before any row is read."""
    for t in (tables.train, tables.eval):
        if t is not None:
            _require_column(t, tables.text_column, "text", where)
            if kind == "classification":
                _require_column(t, tables.label_column, "label", where)


def _usable_rows(table: _Table, tables: _Tables, kind: str, dropped: dict[str, int]) -> list[tuple[str, Any]]:
    """``(text, label)`` of the rows a task can use, in table order; the others are counted in
    ``dropped`` by why (describe() reports them)."""
    out = []
    for r in table.rows:
        text = _as_text(r.get(tables.text_column))
        label = norm_label(r.get(tables.label_column)) if kind == "classification" else None
        if not text:
            dropped["empty_text"] = dropped.get("empty_text", 0) + 1
            continue
        if kind == "classification" and label is None:
            why = tables.builtin.unlabelled if tables.builtin else "missing_label"
            dropped[why] = dropped.get(why, 0) + 1
            continue
        out.append((text, label))
    return out


def _lm_task(
    tokenizer, train_rows: list, eval_rows: list, max_length: int, info: dict, text_column: str, where: str
) -> LMTask:
    """The texts alone, truncated; a text under 2 tokens has no next token to predict and is dropped."""

    def enc(rs):
        ids = tokenizer([t for t, _ in rs], truncation=True, max_length=max_length)["input_ids"]
        return [list(x) for x in ids if len(x) >= 2]

    tr, ev = enc(train_rows), enc(eval_rows)
    too_short = len(train_rows) + len(eval_rows) - len(tr) - len(ev)
    if too_short:
        info["dropped"]["under_2_tokens"] = too_short
    if not tr or not ev:
        raise DataError(f"{where}: no text of at least 2 tokens in the {'train' if not tr else 'eval'} split")
    info["text_column"] = text_column
    return LMTask(tokenizer=tokenizer, train_ids=tr, eval_ids=ev, info=info)


def _classification_task(
    tokenizer,
    train_rows: list,
    eval_rows: list,
    label_words: list[str] | None,
    template: str | None,
    max_length: int,
    info: dict,
    tables: _Tables,
    where: str,
) -> ClassificationTask:
    """Labels to class indices, label words to their first tokens, texts to prompts."""
    label_words, mapping = label_words_and_mapping(train_rows, eval_rows, label_words, tables.label_column, where)

    def to_index(lab):
        return mapping[lab] if mapping is not None else int(lab)

    train_labels = [to_index(lab) for _, lab in train_rows]
    eval_labels = [to_index(lab) for _, lab in eval_rows]
    bad = sorted({lab for lab in train_labels + eval_labels if not 0 <= lab < len(label_words)})
    if bad:
        detail = f" (label mapping {mapping})" if mapping else ""
        raise DataError(
            f"{where}: labels {bad[:5]} are outside [0, {len(label_words)}) for label words {label_words}{detail}"
        )
    label_token_ids = first_tokens(tokenizer, label_words)
    template = DEFAULT_TEMPLATE if template is None else template
    encoder = PromptEncoder(tokenizer, template, max_length)
    tr = encoder.encode_all([t for t, _ in train_rows])
    ev = encoder.encode_all([t for t, _ in eval_rows])
    info.update(
        {
            "text_column": tables.text_column,
            "label_column": tables.label_column,
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
