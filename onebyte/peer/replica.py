"""A replica: the model being trained plus what every peer needs to keep it bit-identical.

It owns the trainable tensors (sorted by name), the shared noise table and the perturbation
hooks, and exposes the two things a step does: estimate a projected gradient on a batch, and
apply a round of contributions. The single-peer loop (train.py) and the swarm loop use it alike.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import torch

from onebyte.zo import NoiseTable, Perturbation, UnexercisedParameterError, apply_round, make_codec, spsa_estimate, weights_sha256


def decays(name: str, tensor: torch.Tensor) -> bool:
    """MeZO's policy: weight decay on matrices, never on biases or norm scales (1-D tensors)."""
    return tensor.dim() >= 2 and not re.search(r"norm|bias", name)


class Replica:
    def __init__(
        self,
        model: torch.nn.Module,
        params: Sequence[tuple[str, torch.Tensor]],
        *,
        lr: float,
        eps: float,
        weight_decay: float = 0.0,
        codec: str = "log8:-8:8",
        table_log2: int = 25,
        table_key: int = 0,
    ):
        if not lr > 0 or not eps > 0:
            raise ValueError(f"lr and eps must be positive, got lr={lr}, eps={eps}")
        self.model = model
        self.params = sorted(params, key=lambda kv: kv[0])
        self.device = self.params[0][1].device
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.codec = make_codec(codec)
        self.noise = NoiseTable(table_log2, table_key, self.device)
        self.perturbation = Perturbation(model, self.params, self.noise)
        self.decay = frozenset(n for n, t in self.params if decays(n, t))
        self._checked = False

    @property
    def num_trainable(self) -> int:
        return sum(t.numel() for _, t in self.params)

    def to_device(self, batch):
        return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(self.device) for f in dataclasses.fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)})

    def estimate(self, seed: int, loss_fn: Callable[[], torch.Tensor]) -> tuple[float, float, float]:
        """(g, L+, L-) for direction z(seed); the weights are untouched."""
        g, lp, lm = spsa_estimate(loss_fn, self.perturbation, seed, self.eps)
        if not self._checked:
            missing = self.perturbation.unexercised()
            if missing:
                raise UnexercisedParameterError(
                    f"{len(missing)} trainable tensor(s) are not used inside their module's forward, e.g. {missing[:3]}; "
                    "exclude them with --trainable"
                )
            self._checked = True
        return g, lp, lm

    def encode(self, g: float):
        """The wire value for g (a byte, or a float for the float32 baseline); None = no contribution."""
        return self.codec.encode(g)

    def apply(self, contributions: Sequence[tuple[int, float]]) -> None:
        """Apply one round: (seed, decoded g) in canonical order."""
        apply_round(self.params, contributions, self.lr, self.noise, self.weight_decay, self.decay)

    def sha256(self) -> str:
        return weights_sha256(self.params)
