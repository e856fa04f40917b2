"""Protocol v3's stateful update rules: Nesterov momentum and Adam on a round's exact mean.

Why: the stateless rule (the round's mean times lr) is limited by the loss's curvature, not by
noise, so a better-averaged round (more peers) buys nothing. A rule with state turns a less noisy
mean into larger steps along the flat directions (BENCHMARKS.md (j)).

Every replica must hold the same bits, so the state is as much a part of the replica as the
weights, and every operation below is one correctly rounded binary32 operation (docs/PROTOCOL.md
§17). For every trainable tensor and element, with s the exact sum of §16.4 and n > 0 the round's
contributions:

    G = fl32(s · fl64(1/n))                               the round's mean estimate
    nesterov:  b = fl32(fl32(β₁·b) + G);  u = fl32(G + fl32(β₁·b))
    adam:      m = fl32(fl32(β₁·m) + fl32(c₁·G))                      c₁ = fl32(1 − β₁)
               v = fl32(fl32(β₂·v) + fl32(c₂·fl32(G·G)))              c₂ = fl32(1 − β₂)
               u = fl32(fl32(m·r₁) ÷ fl32(√fl32(v·r₂) + ε))           r_i = fl32(1 / fl32(1 − β_iᵗ))
    t = fl32(θ);  t = fl32(t·d) for decayed tensors;  θ = fl_dtype(fl32(t − fl32(lr·u)))

+, −, × run as binary32 kernels (IEEE, one kernel per operation, so nothing can fuse them);
√ and ÷ run in binary64 and are rounded once to binary32, which gives the correctly rounded
binary32 result (Figueroa 1995) even where a library's binary32 √ is not. βᵗ is a product of t
binary64 multiplications, never ``pow``. t counts the non-empty rounds applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

OPTIMIZERS = ("sgd", "nesterov", "adam")
STATE_PREFIX = "optim/"  # state tensors are hashed and checkpointed under these names, after the weights
STEP_NAME = STATE_PREFIX + "step"


def f32(x: float) -> float:
    """The binary32 value nearest to x (ties to even), as a Python float."""
    return float(np.float32(x))


@dataclass(frozen=True)
class OptimizerSpec:
    """A run's update rule with its constants as exact binary32 values."""

    name: str = "sgd"
    lr: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8

    @classmethod
    def of(cls, name: str, lr: float, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-8) -> OptimizerSpec:
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
        if name != "sgd":
            if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
                raise ValueError(f"betas must be in [0, 1), got {beta1}, {beta2}")
            if not eps > 0:
                raise ValueError(f"optim_eps must be positive, got {eps}")
        return cls(name, f32(lr), f32(beta1), f32(beta2), f32(eps))

    @property
    def stateful(self) -> bool:
        return self.name != "sgd"

    @property
    def slots(self) -> tuple[str, ...]:
        """The per-element state, one float32 copy of the trainable set each."""
        return {"sgd": (), "nesterov": ("momentum",), "adam": ("exp_avg", "exp_avg_sq")}[self.name]


def protocol_version(directions: str, optimizer: str) -> int:
    """1: dense directions, 2: low-rank (both stateless); 3: a stateful rule on either family."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if optimizer != "sgd":
        return 3
    return 1 if directions == "dense" else 2


def beta_power(beta: float, t: int) -> float:
    """βᵗ by t binary64 multiplications (stops once it underflows to 0: it stays 0)."""
    p = 1.0
    for _ in range(t):
        p *= beta
        if p == 0.0:
            break
    return p


class StatefulRule:
    """The optimizer state of a replica and the per-block update that reads and writes it.

    ``apply_round_exact`` computes each block's exact sums and hands them to ``sink(name)``;
    ``begin(n)`` fixes the round's scalars first. The state tensors live on the weights' device.
    """

    def __init__(
        self,
        spec: OptimizerSpec,
        params: Sequence[tuple[str, torch.Tensor]],
        weight_decay: float = 0.0,
        decay: frozenset[str] | set[str] = frozenset(),
    ):
        if not spec.stateful:
            raise ValueError("sgd has no state")
        self.spec = spec
        self.params = dict(params)
        self.state = {
            (slot, name): torch.zeros(t.shape, dtype=torch.float32, device=t.device)
            for name, t in params
            for slot in spec.slots
        }
        self.step = torch.zeros((), dtype=torch.int64)  # non-empty rounds applied (Adam's t)
        self.shrink = f32(1.0 - spec.lr * weight_decay) if weight_decay else None
        self.decay = frozenset(decay)
        self.c1, self.c2 = f32(1.0 - spec.beta1), f32(1.0 - spec.beta2)  # Adam's (1 - beta) as binary32
        self._round: dict[str, float] = {}
        self._powers = (0, 1.0, 1.0)  # (t, β₁ᵗ, β₂ᵗ) for the t last computed

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The state as named tensors: what the hash, checkpoints and catch-up carry."""
        out = [(f"{STATE_PREFIX}{slot}/{name}", t) for (slot, name), t in self.state.items()]
        return [*out, (STEP_NAME, self.step)]

    def reset(self) -> None:
        for t in self.state.values():
            t.zero_()
        self.step.zero_()

    def begin(self, n: int) -> None:
        """The round's scalars: 1/n, and Adam's bias corrections for this round's t."""
        assert n > 0
        t = int(self.step) + 1
        r = {"inv_n": 1.0 / n}
        if self.spec.name == "adam":
            p1, p2 = self._beta_powers(t)
            r["r1"] = f32(1.0 / f32(1.0 - p1))
            r["r2"] = f32(1.0 / f32(1.0 - p2))
        self._round = r

    def end(self) -> None:
        self.step += 1

    def _beta_powers(self, t: int) -> tuple[float, float]:
        last, p1, p2 = self._powers
        if t == last + 1:
            p1, p2 = p1 * self.spec.beta1, p2 * self.spec.beta2
        elif t != last:
            p1, p2 = beta_power(self.spec.beta1, t), beta_power(self.spec.beta2, t)
        self._powers = (t, p1, p2)
        return p1, p2

    def sink(self, name: str):
        """The update of tensor ``name``'s blocks: (block of θ, its exact sums s, first element)."""
        spec, r = self.spec, self._round
        d = self.shrink if self.shrink is not None and name in self.decay else None
        slots = [self.state[(slot, name)].view(-1) for slot in spec.slots]

        def update(block: torch.Tensor, s: torch.Tensor, start: int) -> None:
            n = block.numel()
            g = s.reshape(-1).mul_(r["inv_n"]).to(torch.float32)  # G = fl32(s · fl64(1/n))
            state = [x[start : start + n] for x in slots]
            if spec.name == "nesterov":
                u = _nesterov(g, state[0], spec.beta1)
            else:
                u = _adam(g, state[0], state[1], spec, self.c1, self.c2, r["r1"], r["r2"])
            u.mul_(spec.lr)
            t = block.view(-1) if block.dtype == torch.float32 else block.reshape(-1).to(torch.float32)
            if d is not None:
                t.mul_(d)  # its own rounding, never fused with the subtraction
            t.sub_(u)
            if t.data_ptr() != block.data_ptr():
                block.copy_(t.view(block.shape))  # round to nearest even in the weights' dtype

        return update


def _nesterov(g: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    b.mul_(beta).add_(g)
    return torch.mul(b, beta).add_(g)  # fl32(G + fl32(β·b))


def _adam(
    g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, spec: OptimizerSpec, c1: float, c2: float, r1: float, r2: float
) -> torch.Tensor:
    m.mul_(spec.beta1).add_(torch.mul(g, c1))
    v.mul_(spec.beta2).add_(torch.mul(g, g).mul_(c2))
    den = torch.mul(v, r2).to(torch.float64).sqrt_().to(torch.float32)  # correctly rounded √ (module docstring)
    den.add_(spec.eps)
    num = torch.mul(m, r1).to(torch.float64)
    return num.div_(den.to(torch.float64)).to(torch.float32)  # correctly rounded ÷


def zero_state(optimizer: str, params: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The state a run of ``optimizer`` starts from (part of its initial hash); [] for sgd."""
    if optimizer == "sgd":
        return []
    return StatefulRule(OptimizerSpec.of(optimizer, 0.0), params).tensors()


def is_state_name(name: str) -> bool:
    """Whether a checkpoint's tensor is optimizer state (``onebyte export`` leaves it out)."""
    return name.startswith(STATE_PREFIX)
