"""What loading a model hands back (:class:`LoadedModel`), its one error type, and the small
checks every loader shares: the dtype names, one-line error text, the trainable parameter set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

__all__ = ["KINDS", "LoadedModel", "ModelLoadError", "one_line", "parse_dtype", "trainable_parameters"]

KINDS = ("causal-lm", "seq-cls")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message says what was tried."""


@dataclass
class LoadedModel:
    """A model ready for zeroth-order training: eval mode, no gradients, on ``device``."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    kind: str  # "causal-lm" or "seq-cls"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def num_parameters(self) -> int:
        """Distinct parameter elements (tied weights counted once)."""
        return sum(p.numel() for p in self.model.parameters())


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise ModelLoadError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'")
    return _DTYPES[key]


def one_line(exc: BaseException) -> str:
    """An exception as one short line, so that every load failure stays a one-line message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def trainable_parameters(model: torch.nn.Module, pattern: str | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters whose name matches ``pattern`` (``re.search``; None = all).

    Sorted by name. A tensor shared under several names (tied embeddings) appears once, under the
    first of its matching names in sorted order. Raises ``ValueError`` if nothing matches.
    """
    if isinstance(model, LoadedModel):
        model = model.model
    try:
        rx = re.compile(pattern) if pattern is not None else None
    except re.error as exc:
        raise ValueError(f"bad parameter pattern {pattern!r}: {exc}") from None
    named = sorted(model.named_parameters(remove_duplicate=False), key=lambda kv: kv[0])
    out: list[tuple[str, torch.nn.Parameter]] = []
    seen: set[int] = set()
    for pname, param in named:
        if rx is not None and not rx.search(pname):
            continue
        if id(param) in seen:
            continue
        seen.add(id(param))
        out.append((pname, param))
    if not out:
        examples = ", ".join(n for n, _ in named[:4])
        raise ValueError(
            f"no parameter name matches {pattern!r} (the model has {len(named)} named parameters, e.g. {examples})"
        )
    return out
