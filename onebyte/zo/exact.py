"""Protocol v2's update: a round applied in one pass, its sum computed exactly.

For every trainable tensor theta and every element (docs/PROTOCOL.md section 16.4):

    s     = fl64(sum_k v_k z_k)        the exact sum, rounded once (exact below 2^53 quanta)
    D     = fl32(fl64(c * s))          c = fl64(-lr / n), one coefficient per round
    t     = fl32(theta);  t = fl32(t * d) if decayed;  theta = fl_dtype(fl32(t + D))

z_k is A_k B_k^T for a low-rank tensor and a table window for any other, so for a matrix the
sum is S = A diag(v) B^T, one matrix product. With the log8 codec every decoded v is an integer
multiple of a quantum q = 2^(min_exp - 23) below 2^bits quanta (q = 2^-31, 39 bits for
log8:-8:8), so a float64 product of up to 2^(53 - bits) terms (2^14) is exact in any order,
blocking, thread count or device; longer rounds add such exact chunks as int64 multiples of q.
Nothing depends on the order of the contributions.

The float32 codec has no such bound: it follows a sequential rule instead, s = fl64(s + v_k z_k)
over k in canonical order (and l = 0..r-1 within a contribution), one correctly rounded addition
per term; it is a baseline, slow on purpose.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onebyte.zo.directions import Directions, factor_offsets, windows
from onebyte.zo.noise import NoiseTable

MAX_BITS = 43  # codecs whose values need more bits leave fewer than 2^20 terms to int64
BLOCK_ELEMS = 1 << 18  # float64 elements of S per block: stays in cache


@dataclass(frozen=True)
class ExactRule:
    """Every value is an integer multiple of 2^quantum_log2 with |v| < 2^(quantum_log2 + bits)."""

    quantum_log2: int
    bits: int

    @property
    def chunk(self) -> int:
        """Terms per float64 product whose every partial sum is exact."""
        return 1 << (53 - self.bits)

    @property
    def max_terms(self) -> int:
        """Terms (contributions x rank) an int64 sum of chunks holds without overflow."""
        return 1 << (63 - self.bits)


def exact_rule(codec) -> ExactRule | None:
    """The exact-sum rule of a codec; None for the float32 codec (sequential rule)."""
    if getattr(codec, "name", None) == "float32":
        return None
    q = codec.min_exp - 23  # every binary32 value >= 2^min_exp is a multiple of 2^(min_exp - 23)
    _, e = math.frexp(codec.max_value)  # max_value < 2^e
    rule = ExactRule(q, e - q)
    if rule.bits > MAX_BITS:
        raise ValueError(f"codec {codec.name} spans {rule.bits} bits; low-rank directions need at most {MAX_BITS} "
                         "(use at least 7 steps per octave)")
    return rule


def exact_matmul(a: torch.Tensor, bt: torch.Tensor, rule: ExactRule | None, chunk: int | None = None,
                 coef: torch.Tensor | None = None, grouped: bool | None = None) -> torch.Tensor:
    """S = a @ diag(coef) @ bt (float64; coef = 1 when None) by the rule: exact (chunked, int64
    between chunks) or sequential. ``grouped`` picks the float32 route of ``grouped_matmul`` for a
    +-1 ``a`` (default: on a GPU from GROUPED_FROM terms on); the route never changes a bit."""
    k = a.shape[1]
    if rule is None:
        a = a if coef is None else a.to(torch.float64) * coef
        s = torch.zeros(a.shape[0], bt.shape[1], dtype=torch.float64, device=a.device)
        for t in range(k):
            s.add_(torch.outer(a[:, t], bt[t].to(torch.float64)))
        return s
    if grouped is None:
        grouped = coef is not None and default_grouped(k, a.device)
    if grouped and coef is None:
        raise ValueError("the grouped route needs the coefficients apart from the +-1 factors")

    def product(c0: int, c1: int) -> torch.Tensor:
        if grouped:
            return grouped_matmul(a[:, c0:c1], coef[c0:c1], bt[c0:c1])
        lhs = a[:, c0:c1].to(torch.float64)
        return _matmul(lhs if coef is None else lhs * coef[c0:c1], bt[c0:c1].to(torch.float64))  # v_k * (+-1): exact

    chunk = min(chunk or rule.chunk, rule.chunk)
    if k <= chunk:
        return product(0, k)
    if k > rule.max_terms:
        raise ValueError(f"a round of {k} terms exceeds the exact sum's {rule.max_terms}")
    total = torch.zeros(a.shape[0], bt.shape[1], dtype=torch.int64, device=a.device)
    scale = 2.0 ** -rule.quantum_log2
    for c0 in range(0, k, chunk):
        part = product(c0, min(k, c0 + chunk))  # exact
        total += (part * scale).to(torch.int64)  # an exact integer number of quanta
    return total.to(torch.float64) * (2.0 ** rule.quantum_log2)


K_SLICE = 512  # terms per product inside an exact sum: keeps that slice of B in cache
# terms from which a GPU uses the mantissa-grouped float32 route (float64 is 1/2 to 1/64 of float32's speed on
# GPUs); a CPU keeps float64, which is as fast here (bench/v2_compare.py: 0.039 s against 0.054 s for 512 terms
# over a 576 x 1536 matrix on one thread)
GROUPED_FROM = 64
FP32_EXACT = 1 << 24  # every integer of magnitude <= 2^24 is a binary32 value


def default_grouped(terms: int, device: torch.device) -> bool:
    """Whether a sum of ``terms`` takes the grouped float32 route by default (a GPU, from GROUPED_FROM terms)."""
    return terms >= GROUPED_FROM and device.type != "cpu"


def grouped_matmul(a: torch.Tensor, coef: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """S = a @ diag(coef) @ bt exactly, in float32 products: a (rows, K) and bt (K, cols) hold +-1,
    coef (K,) binary32 values (float64 tensor). The same bits as the float64 route whenever that
    one is exact (docs/PROTOCOL.md section 16.4, "a fast exact route").

    Each coef is +-M * 2^e with M in [0.5, 1): terms sharing M form a group (8 for log8), where the
    coefficient is +-2^(e - e_min) times one common factor M * 2^e_min. +-2^t and +-1 are exact
    in float32 (and bf16, TF32), so a product over a chunk of the group whose sum of |2^t| stays
    at most 2^24 has only integer partial sums below 2^24: exact in any order, blocking or device.
    The chunks' integer sums are added in float64 (exact below 2^53) and scaled by M * 2^e_min;
    the group totals are multiples of the round's quantum, so their float64 sum is exact too."""
    out = torch.zeros(a.shape[0], bt.shape[1], dtype=torch.float64, device=a.device)
    keep = torch.nonzero(coef != 0).flatten()  # a zero term adds nothing (and has no exponent)
    if keep.numel() == 0:
        return out
    a, coef, bt = a[:, keep], coef[keep], bt[keep]
    mant, expo = torch.frexp(coef.abs())
    e_min = int(expo.min())
    unit = torch.ldexp(coef.sign(), expo - e_min)  # +-2^t, exact
    if float(unit.abs().max()) > FP32_EXACT:
        raise ValueError("coefficients span more than 24 octaves: use the float64 route")
    a32 = a.to(torch.float32)
    bt32 = bt.to(torch.float32)
    with _tensor_cores(a.device):
        _grouped_into(out, a32, bt32, mant, unit, e_min)
    return out


@contextlib.contextmanager
def _tensor_cores(device: torch.device) -> Iterator[None]:
    """TF32 tensor cores for the grouped products on a GPU: every input (+-1, +-2^t) has a 1-bit
    significand, exact in TF32's 11 bits, and the accumulation is float32, so the products keep
    their bits at tensor-core speed (several times float32's on most GPUs)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _grouped_into(out: torch.Tensor, a32: torch.Tensor, bt32: torch.Tensor, mant: torch.Tensor, unit: torch.Tensor, e_min: int) -> None:
    for m in torch.unique(mant).tolist():  # ascending: a fixed order (the sum is exact in any)
        idx = torch.nonzero(mant == m).flatten()
        weights = unit[idx].abs().tolist()
        start, total = 0, 0.0
        for i, w in enumerate(weights + [math.inf]):  # cut where the chunk's sum of |2^t| would pass 2^24
            if total + w > FP32_EXACT:
                cols = idx[start:i]
                part = (a32[:, cols] * unit[cols].to(torch.float32)) @ bt32[cols]  # integers <= 2^24: exact
                out.add_(part, alpha=math.ldexp(m, e_min))  # times M * 2^e_min: a multiple of the quantum, exact
                start, total = i, 0.0
            total += w


def _matmul(a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """a @ bt summed over slices of K_SLICE terms: every partial sum is exact, so slicing changes no bit."""
    s = a[:, :K_SLICE] @ bt[:K_SLICE]
    for c0 in range(K_SLICE, a.shape[1], K_SLICE):
        s.addmm_(a[:, c0 : c0 + K_SLICE], bt[c0 : c0 + K_SLICE])
    return s


def _update(block: torch.Tensor, s: torch.Tensor, c: float, d: float | None, buf: torch.Tensor | None = None) -> None:
    """theta = fl_dtype(fl32(fl32(theta * d) + fl32(fl64(c * s)))) on one block; ``s`` is overwritten."""
    s.mul_(c)
    delta = s.to(torch.float32) if buf is None else buf[: s.numel()].view(s.shape).copy_(s)
    t = block if block.dtype == torch.float32 else block.to(torch.float32)
    if d is not None:
        t.mul_(d)
    t.add_(delta.view(block.shape))
    if t is not block:
        block.copy_(t)  # round to nearest even in the tensor's dtype


def _update_rank1(block: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d0: float, d: float | None) -> None:
    """One contribution of rank 1: s = v a b^T, so fl32(fl64(c s)) = d0 a b^T exactly with
    d0 = fl32(fl64(c v)) (rounding is symmetric in the sign): one pass, like v1's single add."""
    t = block if block.dtype == torch.float32 else block.to(torch.float32)
    if d is not None:
        t.mul_(d)  # its own rounding, never fused with the add
    t.addr_(a, b, alpha=d0)  # d0 * a_i * b_j is exact (+-d0): one rounding per element
    if t is not block:
        block.copy_(t)


def apply_round_exact(
    params: Sequence[tuple[str, torch.Tensor]],
    contributions: Sequence[tuple[int, float]],
    lr: float,
    noise: NoiseTable,
    directions: Directions,
    rule: ExactRule | None,
    weight_decay: float = 0.0,
    decay: frozenset[str] | set[str] = frozenset(),
    *,
    chunk: int | None = None,
    block_elems: int = BLOCK_ELEMS,
    grouped: bool | None = None,
) -> None:
    """Apply one round (v2): ``contributions`` is the round's list of (seed, decoded v).

    ``chunk`` (terms per exact product), ``block_elems`` and ``grouped`` (the float32 route for
    matrices; default on a GPU from GROUPED_FROM terms on) only change how the work is done, never a bit
    of the result (tests/test_v2_math.py)."""
    if not contributions:
        return
    n = len(contributions)
    seeds = [s for s, _ in contributions]
    c = -float(lr) / n
    shrink = float(np.float32(1.0 - lr * weight_decay))
    with torch.no_grad():
        for name, p in params:
            if not p.is_contiguous():
                raise ValueError(f"trainable tensor {name} is not contiguous")
            d = shrink if weight_decay and name in decay else None
            vals = torch.tensor([v for _, v in contributions], dtype=torch.float64, device=p.device)
            if directions.is_lowrank(p):
                _apply_lowrank(p, name, seeds, vals, directions.rank, c, d, noise, rule, chunk, block_elems, grouped)
            else:
                _apply_dense(p.view(-1), name, seeds, vals, c, d, noise, rule, chunk, block_elems)


def _apply_lowrank(p, name, seeds, vals, rank, c, d, noise, rule, chunk, block_elems, grouped) -> None:
    m, cols = p.shape
    coef = vals.repeat_interleave(rank)  # term k*rank + l carries v_k
    a_off = factor_offsets(noise, seeds, name, "a", rank)
    b_off = factor_offsets(noise, seeds, name, "b", rank)
    if coef.numel() == 1 and rule is not None:
        d0 = float(np.float32(c * float(vals[0])))
        a = windows(noise, a_off, 0, m)[0].to(device=p.device, dtype=torch.float32)
        b = windows(noise, b_off, 0, cols)[0].to(device=p.device, dtype=torch.float32)
        rows = max(1, min(m, block_elems // cols))
        for i0 in range(0, m, rows):
            _update_rank1(p[i0 : i0 + rows], a[i0 : i0 + rows], b, d0, d)
        return
    if rule is not None and grouped is None:
        grouped = default_grouped(coef.numel(), p.device)
    fdt = torch.float32 if grouped else torch.float64  # +-1 either way
    bt = windows(noise, b_off, 0, cols).to(device=p.device, dtype=fdt)  # (K, p)
    rows = max(1, min(m, block_elems // cols))
    buf = torch.empty(rows * cols, dtype=torch.float32, device=p.device)
    for i0 in range(0, m, rows):
        i1 = min(m, i0 + rows)
        a = windows(noise, a_off, i0, i1 - i0).to(device=p.device, dtype=fdt).t()  # (rows, K), entries +-1
        s = exact_matmul(a, bt, rule, chunk, coef=coef, grouped=bool(grouped))
        _update(p[i0:i1], s, c, d, buf)


def _apply_dense(flat, name, seeds, vals, c, d, noise, rule, chunk, block_elems) -> None:
    offsets = torch.tensor([noise.offset(s, name) for s in seeds], dtype=torch.int64)
    step = max(1, block_elems // max(1, len(seeds)))
    for a0 in range(0, flat.numel(), step):
        a1 = min(flat.numel(), a0 + step)
        z = windows(noise, offsets, a0, a1 - a0).to(device=flat.device, dtype=torch.float64)  # (n, len)
        s = exact_matmul(vals.view(1, -1), z, rule, chunk)  # (1, len)
        _update(flat[a0:a1], s, c, d)
