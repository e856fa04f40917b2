"""What is trained: models (load, export), tasks (built-in and user data, prompts, label words),
losses and evaluation. A volunteer's process (onebyte.peer) uses these; they know nothing of it.

Names are imported on first use, so that ``import onebyte.tasks.builtin`` (the CLI's defaults)
does not pull in torch and transformers before a command needs them.
"""

from importlib import import_module

_WHERE = {
    "BUILTIN_TASKS": "builtin",
    "DEFAULT_DATASET": "builtin",
    "load_task": "data",
    "balanced_accuracy": "metrics",
    "bias_only_line": "metrics",
    "classification_scores": "metrics",
    "DEFAULT_MODEL": "builtin_models",
    "LoadedModel": "loaded_model",
    "ModelLoadError": "loaded_model",
    "load_model": "loading",
    "trainable_parameters": "loaded_model",
    "DataError": "sources",
    "Batch": "task",
    "ClassificationTask": "task",
    "LMTask": "task",
    "Task": "task",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"onebyte.tasks.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'onebyte.tasks' has no attribute {name!r}")
