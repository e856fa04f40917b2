"""onebyte: decentralized zeroth-order fine-tuning, about one byte per gradient."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
