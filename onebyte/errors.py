"""What the CLI reports as a one-line user error instead of a traceback.

Model, data, checkpoint and argument problems raise ValueError subclasses (ModelLoadError,
DataError, CheckpointError, ...); missing files raise OSError.
"""

from onebyte.zo.perturb import UnexercisedParameterError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, UnexercisedParameterError)
