"""A replica: the model being trained plus what every peer needs to keep it bit-identical.

It owns the trainable tensors (sorted by name), the shared noise table and the perturbation
hooks, and exposes the two things a step does: estimate a projected gradient on a batch, and
apply a round of contributions. The single-peer loop (train.py) and the swarm loop use it alike.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence

import torch

from onebyte.settings import CODEC
from onebyte.zo import (
    NoiseTable,
    Perturbation,
    UnexercisedParameterError,
    apply_round,
    make_codec,
    spsa_estimate,
    weights_sha256,
)
from onebyte.zo.directions import Directions
from onebyte.zo.exact import apply_round_exact, exact_rule
from onebyte.zo.lowrank import BatchLayoutError, InForward
from onebyte.zo.optim import OptimizerSpec, StatefulRule, protocol_version

log = logging.getLogger("onebyte")


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
        codec: str = CODEC,
        table_log2: int = 25,
        table_key: int = 0,
        directions: str = "dense",
        optimizer: str = "sgd",
        beta1: float = 0.9,
        beta2: float = 0.99,
        optim_eps: float = 1e-8,
    ):
        if not lr > 0 or not eps > 0:
            raise ValueError(f"lr and eps must be positive, got lr={lr}, eps={eps}")
        self.model = model
        self.params = sorted(params, key=lambda kv: kv[0])
        self.device = self.params[0][1].device
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.codec = make_codec(codec)
        self.noise = NoiseTable(table_log2, table_key, self.device)
        self.directions = Directions.parse(directions)
        self.optimizer = OptimizerSpec.of(optimizer, self.lr, beta1, beta2, optim_eps)
        # the exact sum of §16.4: v2's apply, and the mean estimate of every v3 rule
        exact = self.directions.lowrank or self.optimizer.stateful
        self.exact_rule = exact_rule(self.codec) if exact else None
        self.perturbation = Perturbation(
            model, self.params, self.noise, self.directions if self.directions.lowrank else None
        )
        self.inforward = InForward(model, self.params, self.noise, self.directions) if self.directions.lowrank else None
        self.decay = frozenset(n for n, t in self.params if decays(n, t))
        self.rule = (
            StatefulRule(self.optimizer, self.params, self.weight_decay, self.decay)
            if self.optimizer.stateful
            else None
        )
        self._checked = False

    @property
    def num_trainable(self) -> int:
        return sum(t.numel() for _, t in self.params)

    def to_device(self, batch):
        return dataclasses.replace(
            batch,
            **{
                f.name: getattr(batch, f.name).to(self.device)
                for f in dataclasses.fields(batch)
                if isinstance(getattr(batch, f.name), torch.Tensor)
            },
        )

    def estimate(self, seed: int, loss_fn: Callable[[], torch.Tensor]) -> tuple[float, float, float]:
        """(g, L+, L-) for direction z(seed) from two forwards through perturbed copies; the
        weights are untouched. Works for every model and both direction families."""
        g, lp, lm = spsa_estimate(loss_fn, self.perturbation, seed, self.eps)
        self._check(self.perturbation.unexercised())
        return g, lp, lm

    def estimate_on(self, seed: int, batch, loss: Callable) -> tuple[float, float, float]:
        """(g, L+, L-) for z(seed) on ``batch``, ``loss(model, batch)`` a scalar: low-rank
        directions evaluate both signs in one forward with no copy; dense ones use ``estimate``."""
        if self.inforward is None or not self.inforward.supported:
            return self.estimate(seed, lambda: loss(self.model, batch))
        return self.estimate_many([seed], [batch], loss)[0]

    def estimate_many(
        self, seeds: Sequence[int], batches: Sequence, loss: Callable
    ) -> list[tuple[float, float, float]]:
        """One (g, L+, L-) per seed, seed k on batches[k]: with low-rank directions all of them in
        one batched forward (rows carry their own seed and sign: population batching)."""
        if len(seeds) != len(batches):
            raise ValueError(f"{len(seeds)} seeds for {len(batches)} batches")
        if self.inforward is not None and self.inforward.supported and len({len(b) for b in batches}) == 1:
            try:
                losses = self._grouped_losses(list(seeds), list(batches), loss)
            except BatchLayoutError as e:
                log.warning(
                    "in-forward low-rank evaluation is not possible for this model (%s): using perturbed copies", e
                )
                self.inforward.supported = False
            else:
                self._check(self.inforward.unexercised())
                return [((lp - lm) / (2.0 * self.eps), lp, lm) for lp, lm in zip(losses[0::2], losses[1::2])]
        return [self.estimate(s, lambda b=b: loss(self.model, b)) for s, b in zip(seeds, batches)]

    def _grouped_losses(self, seeds: list[int], batches: list, loss: Callable) -> list[float]:
        """L+ and L- of every seed from ONE forward over all rows (each batch twice: +eps, -eps).

        The task's loss runs once on the whole batch (that is the forward); then once per row
        group on the matching rows of that forward's output, replayed without recomputing, so each
        group's loss means exactly what ``loss(model, group)`` means."""
        groups = [b for b in batches for _ in (0, 1)]
        combined = _concat(groups)
        rows, total = len(batches[0]), len(combined)
        captured = {}

        def grab(module, args, kwargs, out):
            captured["out"] = out

        with torch.no_grad():
            handle = self.model.register_forward_hook(grab, with_kwargs=True)
            try:
                with self.inforward(seeds, rows, self.eps):
                    loss(self.model, combined)
            finally:
                handle.remove()
            if "out" not in captured:
                raise BatchLayoutError("the loss did not call the model")
            out, losses = captured["out"], []
            for g in range(len(groups)):
                part = _rows(out, slice(g * rows, (g + 1) * rows), total)
                self.model.forward = lambda *a, _p=part, **k: _p
                try:
                    losses.append(float(loss(self.model, _rows(combined, slice(g * rows, (g + 1) * rows), total))))
                finally:
                    del self.model.forward
        return losses

    def _check(self, missing: list[str]) -> None:
        if not self._checked:
            if missing:
                raise UnexercisedParameterError(
                    f"{len(missing)} trainable tensor(s) are not used inside their module's forward, e.g. "
                    f"{missing[:3]}; "
                    "exclude them with --trainable"
                )
            self._checked = True

    def encode(self, g: float):
        """The wire value for g (a byte, or a float for the float32 baseline); None = no contribution."""
        return self.codec.encode(g)

    @property
    def protocol_version(self) -> int:
        return protocol_version(self.directions.name, self.optimizer.name)

    def state_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """What a replica is: the trainable tensors, then the update rule's state (v3). Hashes,
        checkpoints, catch-up and repair all carry exactly this."""
        return self.params if self.rule is None else [*self.params, *self.rule.tensors()]

    def apply(self, contributions: Sequence[tuple[int, float]]) -> None:
        """Apply one round: (seed, decoded g) in canonical order. Live rounds, catch-up, restart
        and repair all come through here (v1: sequential float32 rule; v2: one exact pass; v3: the
        exact mean into a stateful rule, onebyte.zo.optim)."""
        if self.rule is not None:
            if not contributions:
                return  # an empty round changes nothing, the state included
            self.rule.begin(len(contributions))
            apply_round_exact(
                self.params, contributions, self.lr, self.noise, self.directions, self.exact_rule, step=self.rule.sink
            )
            self.rule.end()
        elif self.directions.lowrank:
            apply_round_exact(
                self.params,
                contributions,
                self.lr,
                self.noise,
                self.directions,
                self.exact_rule,
                self.weight_decay,
                self.decay,
            )
        else:
            apply_round(self.params, contributions, self.lr, self.noise, self.weight_decay, self.decay)

    def sha256(self) -> str:
        return weights_sha256(self.state_tensors())


_PAD = {"labels": -100}  # what padding means per batch field (input ids and masks: 0)


def _concat(batches: list):
    """One batch of all rows; fields with a sequence axis are left-padded to the longest."""
    fields = [f.name for f in dataclasses.fields(batches[0]) if isinstance(getattr(batches[0], f.name), torch.Tensor)]
    out = {}
    for name in fields:
        parts = [getattr(b, name) for b in batches]
        if parts[0].dim() >= 2:
            width = max(p.shape[1] for p in parts)
            parts = [
                torch.nn.functional.pad(p, (width - p.shape[1], 0), value=_PAD.get(name, 0))
                if p.shape[1] < width
                else p
                for p in parts
            ]
        out[name] = torch.cat(parts, 0)
    return dataclasses.replace(batches[0], **out)


def _rows(obj, sl: slice, total: int):
    """Rows ``sl`` of a batch, a tensor, or a model output (a ModelOutput, tuple or tensor)."""
    if isinstance(obj, torch.Tensor):
        return obj[sl] if obj.dim() > 0 and obj.shape[0] == total else obj
    if isinstance(obj, Mapping):  # transformers' ModelOutput (an OrderedDict)
        return type(obj)(**{k: _rows(v, sl, total) for k, v in obj.items()})
    if dataclasses.is_dataclass(obj):  # a task's Batch
        return dataclasses.replace(
            obj, **{f.name: _rows(getattr(obj, f.name), sl, total) for f in dataclasses.fields(obj)}
        )
    if isinstance(obj, tuple):
        return tuple(_rows(v, sl, total) for v in obj)
    return obj
