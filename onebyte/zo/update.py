"""The update rule: a round's contributions, in canonical order, applied bit-reproducibly.

For every trainable tensor theta (docs/PROTOCOL.md, "Update rule"):

    c_k   = fl32(-lr * g_k / n)                       (float64 arithmetic, rounded once)
    D     = 0;  D = fl32(D + c_k * z_k)  for k = 1..n  (float32, in canonical order)
    t     = fl32(theta)                                (exact widening)
    t     = fl32(t * fl32(1 - lr * wd))                (only if wd > 0 and the tensor decays)
    theta = fl_dtype(fl32(t + D))                      (round to nearest even)

Every step is one correctly rounded IEEE operation, and c_k * z_k is exact because z is +-1, so
no device, vector width or FMA can change a bit. The implementation streams in chunks: for each
chunk of a tensor it accumulates all n windows in a cache-resident buffer, then writes theta once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from onebyte.zo.noise import NoiseTable


def round_coefficients(values: Sequence[float], lr: float) -> list[float]:
    """c_k = fl32(-lr * g_k / n), computed in float64 and rounded once."""
    n = len(values)
    return [float(np.float32(-lr * g / n)) for g in values]


def apply_round(
    params: Sequence[tuple[str, torch.Tensor]],
    contributions: Sequence[tuple[int, float]],
    lr: float,
    noise: NoiseTable,
    weight_decay: float = 0.0,
    decay: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Apply one round: ``contributions`` is the canonical list of (seed, decoded g)."""
    if not contributions:
        return
    seeds = [s for s, _ in contributions]
    coeffs = round_coefficients([g for _, g in contributions], lr)
    shrink = float(np.float32(1.0 - lr * weight_decay))
    buffers: dict = {}  # per device: one cache-sized delta (and widening) buffer for the whole round
    with torch.no_grad():
        for name, p in params:
            if not p.is_contiguous():
                raise ValueError(f"trainable tensor {name} is not contiguous")
            flat = p.view(-1)
            offsets = [noise.offset(s, name) for s in seeds]
            d = shrink if weight_decay and name in decay else None
            if p.dtype == torch.float32 and len(coeffs) == 1 and d is None:
                # D = c*z exactly, so theta + D needs no buffer: one streaming pass
                for i, t, m in noise.segments(offsets[0], flat.numel()):
                    flat[i : i + m].add_(noise.signs[t : t + m], alpha=coeffs[0])
            else:
                if flat.device not in buffers:
                    buffers[flat.device] = torch.empty(2 * noise.chunk, dtype=torch.float32, device=flat.device)
                _apply_fused(flat, offsets, coeffs, d, noise, buffers[flat.device])


def _apply_fused(
    flat: torch.Tensor, offsets: list[int], coeffs: list[float], d: float | None, noise: NoiseTable, buf: torch.Tensor
) -> None:
    """Per cache-sized chunk: accumulate D over all windows, then write theta once."""
    chunk = min(noise.chunk, flat.numel())
    delta_buf = buf[:chunk]
    wide_buf = None if flat.dtype == torch.float32 else buf[noise.chunk : noise.chunk + chunk]
    mask = noise.size - 1
    for a in range(0, flat.numel(), chunk):
        b = min(a + chunk, flat.numel())
        delta = delta_buf[: b - a]
        delta.zero_()
        for o, c in zip(offsets, coeffs):
            for i, t, m in noise.segments((o + a) & mask, b - a):
                delta[i : i + m].add_(noise.signs[t : t + m], alpha=c)
        theta = flat[a:b] if wide_buf is None else wide_buf[: b - a].copy_(flat[a:b])
        if d is not None:
            theta.mul_(d)
        theta.add_(delta)
        if wide_buf is not None:
            flat[a:b].copy_(theta)  # round to nearest even in the tensor's dtype
