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

Two routes compute the exact sum and give the same bits: float64 products, and float32 products
over terms grouped by the mantissa of v (GroupPlan), about twice as fast on a CPU from a few
hundred terms and the only fast one on most GPUs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onebyte.zo.directions import Directions, factor_offsets, windows
from onebyte.zo.noise import NoiseTable, tensor_offsets

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
        raise ValueError(
            f"codec {codec.name} spans {rule.bits} bits; low-rank directions need at most {MAX_BITS} "
            "(use at least 7 steps per octave)"
        )
    return rule


def exact_matmul(
    a: torch.Tensor,
    bt: torch.Tensor,
    rule: ExactRule | None,
    chunk: int | None = None,
    coef: torch.Tensor | None = None,
    grouped: bool | None = None,
) -> torch.Tensor:
    """S = a @ diag(coef) @ bt (float64; coef = 1 when None) by the rule: exact (chunked, int64
    between chunks) or sequential. ``grouped`` picks the float32 route of ``grouped_matmul`` for a
    +-1 ``a`` (default: ``default_grouped``); the route never changes a bit."""
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
    if k > rule.max_terms:
        raise ValueError(f"a round of {k} terms exceeds the exact sum's {rule.max_terms}")
    if grouped:
        return grouped_matmul(a, coef, bt, rule, chunk)

    def product(c0: int, c1: int) -> torch.Tensor:
        lhs = a[:, c0:c1].to(torch.float64)
        return _matmul(lhs if coef is None else lhs * coef[c0:c1], bt[c0:c1].to(torch.float64))  # v_k * (+-1): exact

    chunk = min(chunk or rule.chunk, rule.chunk)
    if k <= chunk:
        return product(0, k)
    total = torch.zeros(a.shape[0], bt.shape[1], dtype=torch.int64, device=a.device)
    scale = 2.0**-rule.quantum_log2
    for c0 in range(0, k, chunk):
        part = product(c0, min(k, c0 + chunk))  # exact
        total += (part * scale).to(torch.int64)  # an exact integer number of quanta
    return total.to(torch.float64) * (2.0**rule.quantum_log2)


K_SLICE = 512  # terms per product inside an exact sum: keeps that slice of B in cache
# terms from which the mantissa-grouped float32 route is the default. A GPU's float64 runs at 1/2 to 1/64 of its
# float32 rate; on a CPU the grouped route's per-group passes cost more than they save below ~256 terms, and from
# there its float32 products run ~2x float64's (bench/v2_compare.py, BENCHMARKS.md "Protocol v2")
GROUPED_FROM_GPU = 64
GROUPED_FROM_CPU = 256
FP32_EXACT = 1 << 24  # every integer of magnitude <= 2^24 is a binary32 value


def default_grouped(terms: int, device: torch.device) -> bool:
    """Whether a sum of ``terms`` takes the grouped float32 route by default (it never changes a bit)."""
    return terms >= (GROUPED_FROM_CPU if device.type == "cpu" else GROUPED_FROM_GPU)


@dataclass(frozen=True)
class GroupPlan:
    """A round's terms arranged for exact float32 products (section 16.4); made once per round.

    Each coefficient is +-M * 2^e with M in [0.5, 1). ``order`` lists the nonzero terms sorted by
    M (8 values for log8), ``unit`` the exact +-2^(e - e_min) of each term in that order, and a
    chunk (start, end, scale) a run of terms sharing M whose sum of |unit| is at most 2^24: a
    float32 product of +-1 factors and these units then has only integer partial sums below 2^24
    (exact in any order, blocking or device, TF32 included), and times scale = M * 2^e_min it is
    an exact multiple of the round's quantum. Chunks form slices of at most ``rule.chunk`` terms
    whose float64 sum is exact; slices are added as int64 quanta."""

    order: torch.Tensor  # int64 (K',): indices of the nonzero terms
    unit: torch.Tensor  # float64 (K',): +-2^t in that order
    slices: tuple[tuple[tuple[int, int, float], ...], ...]
    quantum_log2: int

    @classmethod
    def of(cls, coef: torch.Tensor, rule: ExactRule, chunk: int | None = None) -> GroupPlan:
        coef = coef.detach().to("cpu", torch.float64)
        keep = torch.nonzero(coef != 0).flatten()  # a zero term adds nothing (and has no exponent)
        mant, expo = torch.frexp(coef[keep].abs())
        order = torch.argsort(mant, stable=True)
        mant, expo, keep = mant[order], expo[order], keep[order]
        e_min = int(expo.min()) if len(keep) else 0
        unit = torch.ldexp(coef[keep].sign(), expo - e_min)
        if len(keep) and float(unit.abs().max()) > FP32_EXACT:
            raise ValueError("coefficients span more than 24 octaves: use the float64 route")
        per_chunk = min(chunk or rule.chunk, rule.chunk)
        ms, ws = mant.tolist(), unit.abs().tolist()
        chunks, start, weight = [], 0, 0.0
        for i in range(len(ms)):
            if i > start and (ms[i] != ms[start] or weight + ws[i] > FP32_EXACT or i - start == per_chunk):
                chunks.append((start, i, math.ldexp(ms[start], e_min)))
                start, weight = i, 0.0
            weight += ws[i]
        if len(ms) > start:
            chunks.append((start, len(ms), math.ldexp(ms[start], e_min)))
        slices, current, terms = [], [], 0
        for c0, c1, scale in chunks:
            if terms + c1 - c0 > rule.chunk:
                slices.append(tuple(current))
                current, terms = [], 0
            current.append((c0, c1, scale))
            terms += c1 - c0
        if current:
            slices.append(tuple(current))
        return cls(keep, unit, tuple(slices), rule.quantum_log2)

    def matmul(self, a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
        """S (float64) from a (rows, K') of +-1 and bt (K', cols) of +-1 times ``unit``, both float32
        and already in plan order."""
        rows, cols = a.shape[0], bt.shape[1]
        total = None
        buf = torch.empty(rows, cols, dtype=torch.float32, device=a.device)
        with _tensor_cores(a.device):
            for chunks in self.slices:
                s = torch.zeros(rows, cols, dtype=torch.float64, device=a.device)
                for c0, c1, scale in chunks:
                    torch.mm(a[:, c0:c1], bt[c0:c1], out=buf)  # integers <= 2^24: exact
                    s.add_(buf, alpha=scale)  # a multiple of the quantum: exact
                if len(self.slices) == 1:
                    return s
                part = (s * 2.0**-self.quantum_log2).to(torch.int64)
                total = part if total is None else total.add_(part)
        if total is None:
            return torch.zeros(rows, cols, dtype=torch.float64, device=a.device)
        return total.to(torch.float64) * 2.0**self.quantum_log2


def grouped_matmul(
    a: torch.Tensor, coef: torch.Tensor, bt: torch.Tensor, rule: ExactRule, chunk: int | None = None
) -> torch.Tensor:
    """S = a @ diag(coef) @ bt exactly, in float32 products (GroupPlan): a (rows, K) and bt (K, cols)
    hold +-1, coef (K,) the decoded values. The same bits as the float64 route."""
    plan = GroupPlan.of(coef, rule, chunk)
    idx = plan.order.to(a.device)
    a32 = a.index_select(1, idx).to(torch.float32)
    bt32 = (
        bt.index_select(0, idx).to(torch.float32).mul_(plan.unit.to(device=a.device, dtype=torch.float32).view(-1, 1))
    )
    return plan.matmul(a32, bt32)


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


Sink = Callable[[torch.Tensor, torch.Tensor, int], None]  # (block of theta, its exact sums s (float64), first element)


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
    step: Callable[[str], Sink] | None = None,
    chunk: int | None = None,
    block_elems: int = BLOCK_ELEMS,
    grouped: bool | None = None,
) -> None:
    """Apply one round (v2): ``contributions`` is the round's list of (seed, decoded v).

    ``step`` replaces v2's stateless update (section 16.4): for a tensor's name it returns the
    function that receives each block of that tensor with its exact sums (protocol v3's stateful
    rules, onebyte.zo.optim). ``chunk`` (terms per exact product), ``block_elems`` and ``grouped``
    (the float32 route for matrices; default: ``default_grouped``) only change how the work is
    done, never a bit of the result (tests/unit/test_lowrank_apply.py)."""
    if not contributions:
        return
    n = len(contributions)
    seeds = [s for s, _ in contributions]
    c = -float(lr) / n
    shrink = float(np.float32(1.0 - lr * weight_decay))
    vals = torch.tensor([v for _, v in contributions], dtype=torch.float64)
    on_device = {vals.device: vals}  # the round's values, copied once to each device that holds a tensor
    terms = n * directions.rank
    plan = None  # the grouped route's plan depends only on the round's values: made once, for every matrix
    with torch.no_grad():
        for name, p in params:
            if not p.is_contiguous():
                raise ValueError(f"trainable tensor {name} is not contiguous")
            d = shrink if weight_decay and name in decay else None
            v = on_device.get(p.device)
            if v is None:
                v = on_device[p.device] = vals.to(p.device)
            sink = step(name) if step is not None else _stateless(c, d)
            if directions.is_lowrank(p):
                route = default_grouped(terms, p.device) if grouped is None else grouped
                if route and plan is None and rule is not None and terms > 1:
                    plan = GroupPlan.of(vals.repeat_interleave(directions.rank), rule, chunk)
                rank1 = (c, d) if step is None and terms == 1 and rule is not None else None
                _apply_lowrank(
                    p,
                    name,
                    seeds,
                    v,
                    directions.rank,
                    sink,
                    rank1,
                    noise,
                    rule,
                    chunk,
                    block_elems,
                    plan if route else None,
                )
            else:
                _apply_dense(p.view(-1), name, seeds, v, sink, noise, rule, chunk, block_elems)


def _stateless(c: float, d: float | None) -> Sink:
    """Version 2's update of a block (section 16.4)."""
    buf: list[torch.Tensor] = []

    def sink(block: torch.Tensor, s: torch.Tensor, _start: int) -> None:
        if block.dim() == 1:
            _update(block, s, c, d)
            return
        if not buf or buf[0].numel() < s.numel() or buf[0].device != block.device:
            buf[:] = [torch.empty(s.numel(), dtype=torch.float32, device=block.device)]
        _update(block, s, c, d, buf[0])

    return sink


def _apply_lowrank(
    p, name, seeds, vals, rank, sink: Sink, rank1, noise, rule, chunk, block_elems, plan: GroupPlan | None
) -> None:
    m, cols = p.shape
    a_off = factor_offsets(noise, seeds, name, "a", rank)
    b_off = factor_offsets(noise, seeds, name, "b", rank)
    rows = max(1, min(m, block_elems // cols))
    if rank1 is not None:  # one stateless term: no sum to compute
        c, d = rank1
        d0 = float(np.float32(c * float(vals[0])))
        a = windows(noise, a_off, 0, m)[0].to(device=p.device, dtype=torch.float32)
        b = windows(noise, b_off, 0, cols)[0].to(device=p.device, dtype=torch.float32)
        for i0 in range(0, m, rows):
            _update_rank1(p[i0 : i0 + rows], a[i0 : i0 + rows], b, d0, d)
        return
    if plan is not None:  # float32 products (section 16.4): terms in the plan's order, its units folded into B
        a_off, b_off = a_off[plan.order], b_off[plan.order]
        bt = windows(noise, b_off, 0, cols).to(device=p.device, dtype=torch.float32)
        bt.mul_(plan.unit.to(device=p.device, dtype=torch.float32).view(-1, 1))  # +-2^t: exact
        for i0 in range(0, m, rows):
            i1 = min(m, i0 + rows)
            a = windows(noise, a_off, i0, i1 - i0).to(device=p.device, dtype=torch.float32).t()  # (rows, K'), +-1
            sink(p[i0:i1], plan.matmul(a, bt), i0 * cols)
        return
    coef = vals.repeat_interleave(rank)  # term k*rank + l carries v_k
    bt = windows(noise, b_off, 0, cols).to(device=p.device, dtype=torch.float64)  # (K, p)
    for i0 in range(0, m, rows):
        i1 = min(m, i0 + rows)
        a = windows(noise, a_off, i0, i1 - i0).to(device=p.device, dtype=torch.float64).t()  # (rows, K), entries +-1
        sink(p[i0:i1], exact_matmul(a, bt, rule, chunk, coef=coef, grouped=False), i0 * cols)


def _apply_dense(flat, name, seeds, vals, sink: Sink, noise, rule, chunk, block_elems) -> None:
    offsets = tensor_offsets(seeds, name, noise.table_log2)
    step = max(1, block_elems // max(1, len(seeds)))
    for a0 in range(0, flat.numel(), step):
        a1 = min(flat.numel(), a0 + step)
        z = windows(noise, offsets, a0, a1 - a0).to(device=flat.device, dtype=torch.float64)  # (n, len)
        s = exact_matmul(vals.view(1, -1), z, rule, chunk)  # (1, len)
        sink(flat[a0:a1], s, a0)
