"""Labels: a label cell as an integer, a string or missing, and the rule that turns a dataset's
labels into class indices and label words (onebyte.tasks.data's module docstring states it)."""

from __future__ import annotations

import math
from typing import Any

from onebyte.tasks.sources import DataError

__all__ = ["DEFAULT_LABEL_WORDS", "is_missing", "label_words_and_mapping", "norm_label"]

DEFAULT_LABEL_WORDS = [" negative", " positive"]


def is_missing(v: Any) -> bool:
    """None or NaN: what pandas and datasets give for an empty cell."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return False


def norm_label(v: Any) -> int | str | None:
    """An integer class, a label string, or None (missing): numpy scalars, bools and whole floats are integers."""
    if is_missing(v):
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


def label_words_and_mapping(
    train_rows: list, eval_rows: list, label_words: list[str] | None, label_column: str, where: str
) -> tuple[list[str], dict[str, int] | None]:
    """The label rule of onebyte.tasks.data's docstring: the label words, and for string labels the map from
    each label string to its class index (None for integer labels, which are the index)."""
    all_labels = [lab for _, lab in train_rows] + [lab for _, lab in eval_rows]
    strings = [lab for lab in all_labels if isinstance(lab, str)]
    if strings and len(strings) != len(all_labels):
        raise DataError(f"{where}: label column {label_column!r} mixes integers and strings")
    mapping: dict[str, int] | None = None
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
            raise DataError(f"{where}: integer labels go up to {top}; pass label_words with {top + 1} words")
        label_words = list(DEFAULT_LABEL_WORDS)
    if not isinstance(label_words, (list, tuple)) or not all(isinstance(w, str) for w in label_words):
        raise DataError(f"label_words must be a list of strings, got {label_words!r}")
    label_words = list(label_words)
    if len(label_words) < 2:
        raise DataError(f"too few label words: need at least 2, got {label_words!r}")
    return label_words, mapping
