"""Choosing examples by a SHA-256 hash of a seed and the row index: the same rows in the same order
in every process, with no RNG involved."""

from __future__ import annotations

import hashlib

from onebyte.tasks.sources import DataError

__all__ = ["hash_order", "hash_seed", "hash_subset", "split_rows"]


def hash_order(n: int, seed: int) -> list[int]:
    """The row indices ``0..n-1`` in the order of ``sha256(f"{seed}:{i}")``."""
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())


def hash_subset(items: list, k: int, seed: int, salt: str) -> list:
    """``k`` hash-chosen items, kept in their order (all of them when there are no more than ``k``)."""
    if k >= len(items):
        return items
    keep = sorted(hash_order(len(items), hash_seed(seed, salt))[:k])
    return [items[i] for i in keep]


def hash_seed(seed: int, salt: str) -> int:
    """A seed derived from ``seed`` and a salt, so that each use of one seed picks independently."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{seed}".encode()).digest()[:8], "big")


def split_rows(
    train_rows: list, eval_rows: list | None, eval_size: int | None, train_size: int | None, split_seed: int, where: str
) -> tuple[list, list, dict]:
    """Train and eval rows, each in table order, and how they were chosen (for describe()). One
    table is split by a hash of ``(split_seed, row)``; given splits are only cut down to size."""
    if eval_rows is None:
        n = len(train_rows)
        if n == 0:
            raise DataError(f"{where} is empty (after dropping rows with no text or label)")
        k = eval_size if eval_size is not None else min(500, max(1, round(0.2 * n)))
        if k >= n:
            raise DataError(f"{where} has {n} usable rows: too few for eval_size={k} plus training")
        order = hash_order(n, split_seed)
        ev_idx, tr_idx = sorted(order[:k]), sorted(order[k:])
        eval_rows = [train_rows[i] for i in ev_idx]
        train_rows = [train_rows[i] for i in tr_idx]
        split = {"method": "sha256(split_seed:row)", "split_seed": split_seed, "eval_size": k}
    else:
        if eval_size is not None:
            eval_rows = hash_subset(eval_rows, eval_size, split_seed, "eval")
        split = {"method": "given", "split_seed": split_seed, "eval_size": eval_size}
    if train_size is not None:
        train_rows = hash_subset(train_rows, train_size, split_seed, "train")
    split["train_size"] = train_size
    if not train_rows:
        raise DataError(f"{where}: the train split is empty (after dropping rows with no text or label)")
    if not eval_rows:
        raise DataError(f"{where}: the eval split is empty (after dropping rows with no text or label)")
    return train_rows, eval_rows, split
