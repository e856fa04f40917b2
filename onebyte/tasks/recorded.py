"""The task a trained model is scored on (``onebyte eval``): the one its run recorded, with what
the user gives instead; the built-in default where neither names a dataset."""

from __future__ import annotations

import json
from pathlib import Path

from onebyte.settings import TASK_FIELDS
from onebyte.tasks.builtin import DEFAULT_DATASET
from onebyte.tasks.export import EXPORT_INFO


def exported_task(folder: str | Path) -> dict:
    """The task settings an exported folder remembers of its run; {} for any other folder or name."""
    info = Path(folder, EXPORT_INFO)
    if not info.is_file():
        return {}
    return {k: v for k, v in (json.loads(info.read_text()).get("task") or {}).items() if k in TASK_FIELDS}


def merge_task(recorded: dict, given: dict) -> tuple[str, dict]:
    """(dataset, the other ``load_task`` keyword arguments): ``given`` values that are not None win."""
    out = dict(recorded)
    out.update({k: v for k, v in given.items() if k in TASK_FIELDS and v is not None})
    out.setdefault("dataset", DEFAULT_DATASET)
    dataset = out.pop("dataset")
    return dataset, {k: v for k, v in out.items() if v is not None}
