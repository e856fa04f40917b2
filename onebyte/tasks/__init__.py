"""What is trained: models (load, export), tasks (built-in and user data, prompts, label words),
losses and evaluation. A volunteer's process (onebyte.peer) uses these; they know nothing of it."""

from onebyte.tasks.builtin import BUILTIN_TASKS, DEFAULT_DATASET
from onebyte.tasks.data import load_task
from onebyte.tasks.metrics import balanced_accuracy, bias_only_line, classification_scores
from onebyte.tasks.models import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model, trainable_parameters
from onebyte.tasks.sources import DataError
from onebyte.tasks.task import Batch, ClassificationTask, LMTask, Task

__all__ = [
    "BUILTIN_TASKS", "Batch", "ClassificationTask", "DEFAULT_DATASET", "DEFAULT_MODEL", "DataError", "LMTask",
    "LoadedModel", "ModelLoadError", "Task", "balanced_accuracy", "bias_only_line", "classification_scores",
    "load_model", "load_task", "trainable_parameters",
]
