"""How onebyte calls transformers: quietly, with a seeded CPU RNG, tokenizers padded on the left,
and GGUF-born models stripped of the quantizer that would stop ``save_pretrained``. Every loader
(built-in, local folder, hub) and the export go through these, so they all behave alike."""

from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from collections.abc import Iterator

import torch

from onebyte.tasks.loaded_model import ModelLoadError

__all__ = ["drop_gguf_quantizer", "finish_tokenizer", "from_pretrained", "quiet_transformers", "seeded", "warm_imports"]


def warm_imports() -> None:
    """Import what building any model and task needs (most of the seconds a build takes on a small
    model are transformers' lazy imports): a peer waiting for a run's manifest calls this, so that
    it joins seconds after the manifest appears instead of a quarter of a minute."""
    for name in (
        "transformers.modeling_utils",
        "transformers.generation.utils",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
        "transformers.tokenization_utils_fast",
        "datasets",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence progress bars and chatty info/warnings from transformers for one load."""
    from transformers.utils import logging as tlog

    bars = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


_RNG = threading.RLock()  # torch's CPU RNG is one per process: two threads seeding it at once interleave their draws


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for a block without disturbing the caller's RNG state; one block at a time
    per process, so that peers built in threads of one process get the same initial weights."""
    with _RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def finish_tokenizer(tok):
    """Pad with eos when there is no pad token, on the left, so batched prompts end together."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError("tokenizer has neither a pad token nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def drop_gguf_quantizer(model) -> None:
    """The GGUF loader leaves a quantizer and a quantization_config behind although the tensors are
    plain floats now; ``save_pretrained`` refuses to save while they are set."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            with contextlib.suppress(Exception):
                delattr(model, attr)


def auto_class(kind: str):
    """The transformers Auto class of a model kind (``"causal-lm"`` or ``"seq-cls"``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification


def from_pretrained(source: str, kind: str, torch_dtype, num_labels: int, **extra):
    """Tokenizer and model from one folder or hub id; ``extra`` goes to both (local_files_only, gguf_file)."""
    from transformers import AutoTokenizer

    kwargs = dict(extra)
    model_kwargs = dict(kwargs, dtype=torch_dtype)
    if kind == "seq-cls":
        model_kwargs["num_labels"] = num_labels
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = auto_class(kind).from_pretrained(source, **model_kwargs)
    return model, tok
