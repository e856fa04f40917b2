"""The ``onebyte`` command line: one module per command group over the library (train.py: train,
export, eval, plot; swarm.py: bootstrap, peer, demo; inspect.py: runs, status, identity), shared
options (options.py, run settings from onebyte.settings) and config files/environment (config.py)."""

from onebyte.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
