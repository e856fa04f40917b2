"""Loading the model a peer fine-tunes: the entry point :func:`load_model`.

A name is a built-in (onebyte.tasks.builtin_models: ``"smollm2-135m"``, the default, and the tiny
random ``"tiny-llama"`` and ``"tiny-gpt2"``), else a local folder, a ``.gguf`` file or a hub
repository id (onebyte.tasks.hub). Whatever the source, the result is finished the same way: pad
token and left padding, dtype and device, eval mode without gradients, aligned weights. Every
failure is a :class:`ModelLoadError` with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

import torch

from onebyte.tasks.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL, TINY_MODELS, smollm2_folder, tiny_model
from onebyte.tasks.hub import load_hub, load_local, looks_like_repo_id
from onebyte.tasks.loaded_model import KINDS, LoadedModel, ModelLoadError, one_line, parse_dtype
from onebyte.tasks.pretrained import finish_tokenizer, from_pretrained, seeded

__all__ = ["load_model"]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    kind: str = "causal-lm",
    dtype: str = "float32",
    device: str = "cpu",
    init_seed: int = 0,
    num_labels: int = 2,
) -> LoadedModel:
    """Load a model and its tokenizer, ready for forward-only training.

    Args:
        name: a built-in (``"smollm2-135m"``, ``"tiny-llama"``, ``"tiny-gpt2"``), a local
            ``save_pretrained`` folder, a folder holding one ``.gguf`` file, a ``.gguf`` file, or
            a hub repository id.
        kind: ``"causal-lm"`` (next-token scoring) or ``"seq-cls"`` (a classification head with
            ``num_labels`` outputs; a head missing from the checkpoint is initialised from
            ``init_seed``, deterministically).
        dtype: ``"float32"`` (recommended for zeroth-order training), ``"bfloat16"``, ``"float16"``.
        device: any torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        init_seed: seed for every randomly initialised weight (tiny models, fresh heads). Weights
            are drawn on the CPU in float32, then cast and moved: identical in every process.

    Returns a :class:`LoadedModel` whose model is in eval mode with ``requires_grad=False`` on all
    parameters, and whose tokenizer has a pad token (eos if it had none) and left padding.

    Raises :class:`ModelLoadError` (a ``ValueError``) with a one-line message on any failure.
    """
    torch_dtype, torch_device = _check_arguments(name, kind, dtype, device, num_labels)
    # Weights are created on the CPU under the seed; dtype/device conversion comes afterwards.
    with seeded(int(init_seed)):
        model, tok = _build(name, kind, torch_dtype, int(init_seed), num_labels)
    model, tok = _finish(name, model, tok, torch_dtype, torch_device, device)
    return LoadedModel(model=model, tokenizer=tok, name=name, kind=kind)


def _check_arguments(name, kind: str, dtype, device, num_labels) -> tuple[torch.dtype, torch.device]:
    """Refuse bad arguments before any slow import or conversion; the torch dtype and device."""
    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    if kind == "seq-cls" and (not isinstance(num_labels, int) or num_labels < 2):
        raise ModelLoadError(f"num_labels must be an integer >= 2, got {num_labels!r}")
    torch_dtype = parse_dtype(dtype)
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"bad device {device!r}: {one_line(exc)}") from None
    return torch_dtype, torch_device


def _build(name: str, kind: str, torch_dtype: torch.dtype, init_seed: int, num_labels: int):
    """Model and tokenizer from wherever ``name`` points: a built-in, a local path, or the hub."""
    key = name.strip().lower()
    if key in TINY_MODELS:
        return tiny_model(key, kind, init_seed, num_labels)
    if key == "smollm2-135m":
        folder = smollm2_folder()
        try:
            return from_pretrained(str(folder), kind, torch.float32, num_labels, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"could not load the cached SmolLM2 folder {folder} ({one_line(exc)}); delete it to convert again"
            ) from None
    path = Path(name).expanduser()
    if path.exists():
        return load_local(name, path, kind, torch_dtype, num_labels)
    if looks_like_repo_id(name):
        return load_hub(name, kind, torch_dtype, num_labels)
    raise ModelLoadError(
        f"model {name!r} not found: no such local file or folder, and it is not a "
        f"built-in ({', '.join(BUILTIN_MODELS)}) or a hub id"
    )


def _finish(name: str, model, tok, torch_dtype: torch.dtype, torch_device: torch.device, device):
    """The same end state from every source: padding, dtype, device, eval, no grads, aligned."""
    tok = finish_tokenizer(tok)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    try:
        model = model.to(dtype=torch_dtype)
        model = model.to(torch_device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(f"could not move model {name!r} to {device!r}: {one_line(exc)}") from None
    model.eval()
    model.requires_grad_(False)
    _align(model)
    return model, tok


def _align(model: torch.nn.Module, alignment: int = 64) -> None:
    """Give every weight its own aligned memory. Tensors read from a safetensors file can sit at
    any offset, and CPU matrix kernels round differently on differently aligned inputs: the same
    weights would then score a batch differently once exported and loaded again."""
    with torch.no_grad():
        for p in model.parameters():
            if p.data_ptr() % alignment:
                p.data = p.data.clone()
