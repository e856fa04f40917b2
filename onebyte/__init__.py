"""onebyte: decentralized zeroth-order fine-tuning, about one byte per gradient."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 3  # the newest protocol this code speaks: a run's own version is in its manifest
# 1: dense directions; 2: low-rank directions, exact apply; 3: a stateful update rule (Nesterov, Adam)
SUPPORTED_PROTOCOL_VERSIONS = (1, 2, 3)
