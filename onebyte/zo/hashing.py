"""SHA-256 of a set of named tensors: what replicas compare to prove they hold the same weights."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

_HASH_CHUNK = 1 << 24  # elements copied to the host at a time


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def weights_sha256(params: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hex SHA-256 over tensors sorted by name: for each, ``name\\0dtype\\0shape\\0`` then its
    little-endian bytes in row-major order (shape as '2x3', '' for a scalar)."""
    h = hashlib.sha256()
    for name, t in sorted(params, key=lambda kv: kv[0]):
        shape = "x".join(str(d) for d in t.shape)
        h.update(f"{name}\0{_dtype_name(t)}\0{shape}\0".encode())
        flat = t.detach().reshape(-1)
        for a in range(0, flat.numel(), _HASH_CHUNK):
            piece = flat[a : a + _HASH_CHUNK].contiguous().cpu()
            h.update(piece.view(torch.uint8).numpy())
    return h.hexdigest()
