"""Reading tables of examples: local files, folders, saved datasets and hub datasets.

Files go through ``datasets``' own builders (csv, json, parquet); a hub id goes through
``datasets.load_dataset`` only when the hub answers. Every failure is a :class:`DataError`
with a one-line message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
_EVAL_WORDS = ("validation", "valid", "val", "dev", "eval", "test")


class DataError(ValueError):
    """A dataset or task could not be built; the message says why."""


@dataclass
class _Table:
    rows: list[dict]  # one dict per row
    columns: list[str]
    files: list[str]  # for describe()


def _frame_to_table(df, files: list[str]) -> _Table:
    columns = [str(c) for c in df.columns]
    df.columns = columns
    return _Table(rows=df.to_dict(orient="records"), columns=columns, files=files)


_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _load_file(path: Path):
    """One local file as a ``datasets.Dataset``, through the library's own csv/json/parquet builders."""
    import datasets

    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"unsupported file type {path.name!r}; use one of {', '.join(FILE_SUFFIXES)}")
    kwargs: dict[str, Any] = {}
    if builder == "csv":  # empty cells are missing; "NA" and friends stay text
        kwargs = {
            "delimiter": "\t" if path.suffix.lower() == ".tsv" else ",",
            "keep_default_na": False,
            "na_values": [""],
        }
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
            if path.suffix.lower() == ".json" and ds.num_rows == 1:
                ds = _unnest_json(ds, path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"could not read {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    return ds


def _unnest_json(ds, path: Path):
    """A JSON object is either ``{"data": [records]}`` or ``{"column": [values], ...}``."""
    import datasets

    row = ds[0]
    lists = {k: v for k, v in row.items() if isinstance(v, list)}
    if len(row) == 1 and lists and all(isinstance(r, dict) for r in next(iter(lists.values()))):
        return datasets.load_dataset("json", data_files=str(path), field=next(iter(lists)), split="train")
    if lists and len(lists) == len(row) and len({len(v) for v in lists.values()}) == 1:
        return datasets.Dataset.from_dict(lists)
    if lists:
        raise DataError(f"{path}: JSON must be a list of records, or a dict of columns")
    return ds


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No "Generating train split" bars for a local file; restores the user's setting."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def _read_files(paths: list[Path], shown: list[str]) -> _Table:
    import datasets

    parts = [_load_file(p) for p in paths]
    cols0 = parts[0].column_names
    for p, d in zip(paths[1:], parts[1:]):
        if sorted(d.column_names) != sorted(cols0):
            raise DataError(f"{p.name} has columns {sorted(d.column_names)} but {paths[0].name} has {sorted(cols0)}")
    try:
        ds = datasets.concatenate_datasets([d.select_columns(cols0) for d in parts]) if len(parts) > 1 else parts[0]
    except Exception as exc:  # noqa: BLE001  (e.g. a column that is text in one file and numbers in another)
        raise DataError(
            f"could not join {', '.join(shown)}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        ) from None
    return _frame_to_table(ds.to_pandas(), shown)


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
    from onebyte.tasks.hub import hub_reachable, offline

    name, _, config = dataset.partition(":")
    try:
        from huggingface_hub import constants

        cache_only = bool(constants.HF_HUB_OFFLINE)  # fixed when huggingface_hub was imported
    except Exception:  # noqa: BLE001  # pragma: no cover
        cache_only = False
    # Without this check an unreachable hub costs ~25 s of retries inside `datasets`.
    if not cache_only and (offline() or not hub_reachable()):
        raise DataError(
            f"unknown dataset {dataset!r}: not a built-in (mr, trec, drugreview), not a local file or "
            "folder, and the hub is unreachable (to use a copy in the local hub cache, start "
            "Python with HF_HUB_OFFLINE=1)"
        )
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None)
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"unknown dataset {dataset!r}: not a built-in (mr, trec, drugreview), not a local file or folder, "
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
    ev = _frame_to_table(ds[eval_split].to_pandas(), [f"{Path(dataset).name}[{eval_split}]"]) if eval_split else None
    return train, ev, {"train": "train", "eval": eval_split}


def _saved_dataset_tables(dataset: str, path: Path) -> tuple[_Table, _Table | None]:
    """A folder written by ``datasets``' ``save_to_disk`` (a DatasetDict or one Dataset)."""
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"could not read the saved dataset {dataset!r}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        train, ev, _ = _dataset_dict_tables(ds, dataset)
        return train, ev
    return _frame_to_table(ds.to_pandas(), [path.name]), None
