"""Evaluate a model at theta + s*eps*z without ever writing to theta.

MeZO perturbs in place and subtracts again, which does not restore the weights bit for bit
(and in bf16/fp16 drifts visibly). Here each module that owns a trainable tensor gets a forward
pre-hook that swaps in a perturbed *copy* for the duration of its own forward and a post-hook
that swaps the original back. The master tensors are never written, so restoration is exact by
construction, and the extra memory is one module's parameters at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from onebyte.zo.noise import NoiseTable


def perturbed_copy(
    theta: torch.Tensor, name: str, seed: int, scale: float, noise: NoiseTable, out: torch.Tensor | None = None
) -> torch.Tensor:
    """theta + scale * z(seed, name), streamed over the noise table; theta is only read."""
    if out is None:
        out = torch.empty_like(theta, memory_format=torch.contiguous_format)
    src = theta.detach().reshape(-1) if theta.is_contiguous() else theta.detach().contiguous().reshape(-1)
    dst = out.view(-1)
    offset = noise.offset(seed, name)
    for i, t, n in noise.segments(offset, src.numel()):
        torch.add(src[i : i + n], noise.signs[t : t + n], alpha=scale, out=dst[i : i + n])
    return out


class UnexercisedParameterError(RuntimeError):
    pass


class Perturbation:
    """Context manager: inside it, every forward of ``model`` sees theta + scale*z(seed).

    ``params`` are the trainable (name, tensor) pairs; names are the canonical names that key z.
    A trainable tensor must be used inside the forward of a module that owns it (true for
    Hugging Face models, tied embeddings included); one that is never exercised is reported.

    Perturbed copies go into buffers reused across forwards (fresh allocations of this size cost
    page faults on every step). A tensor owned by several modules (a tied embedding) is perturbed
    once per context and kept until the context exits, instead of once per owner.
    """

    def __init__(
        self, model: torch.nn.Module, params: Sequence[tuple[str, torch.Tensor]], noise: NoiseTable, directions=None
    ):
        self.model = model
        self.noise = noise
        self.directions = directions  # onebyte.zo.directions.Directions; None = dense
        self.names = {id(p): name for name, p in params}
        self.owners: list[tuple[torch.nn.Module, list[torch.nn.Parameter]]] = []
        owner_count: dict[int, int] = {}
        for module in model.modules(remove_duplicate=False):
            owned = [p for p in module._parameters.values() if p is not None and id(p) in self.names]
            if owned and all(module is not m for m, _ in self.owners):
                self.owners.append((module, owned))
                for p in owned:
                    owner_count[id(p)] = owner_count.get(id(p), 0) + 1
        self.shared = {pid for pid, n in owner_count.items() if n > 1}
        self._pool: dict[tuple, list[torch.Tensor]] = {}
        self.seed = 0
        self.scale = 0.0
        # id -> [param, original tensor, nesting depth]; only the outermost hook restores.
        self._swapped: dict[int, list] = {}
        self._exercised: set[int] = set()
        self._handles: list = []

    def __call__(self, seed: int, scale: float) -> Perturbation:
        self.seed, self.scale = seed, scale
        return self

    def _pre(self, owned: list[torch.nn.Parameter]) -> Callable:
        def hook(module, args):
            for p in owned:
                entry = self._swapped.get(id(p))
                if entry is not None:  # a module nested in another owner of the same tensor
                    entry[2] += 1
                    continue
                original = p.data
                # a shared tensor stays perturbed until __exit__ (depth never returns to 0)
                self._swapped[id(p)] = [p, original, 2 if id(p) in self.shared else 1]
                p.data = self._copy(original, self.names[id(p)])
                self._exercised.add(id(p))

        return hook

    def _post(self, owned: list[torch.nn.Parameter]) -> Callable:
        def hook(module, args, output):
            for p in owned:
                entry = self._swapped.get(id(p))
                if entry is None:
                    continue
                entry[2] -= 1
                if entry[2] == 0:
                    self._restore(p, entry[1])
                    del self._swapped[id(p)]

        return hook

    def __enter__(self) -> Perturbation:
        self._exercised.clear()
        for module, owned in self.owners:
            self._handles.append(module.register_forward_pre_hook(self._pre(owned)))
            self._handles.append(module.register_forward_hook(self._post(owned)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, original, _ in self._swapped.values():  # shared tensors, or a forward that raised midway
            self._restore(p, original)
        self._swapped.clear()

    def _copy(self, original: torch.Tensor, name: str) -> torch.Tensor:
        if self.directions is not None and self.directions.is_lowrank(original):
            from onebyte.zo.directions import lowrank_direction

            z = lowrank_direction(self.noise, self.seed, name, tuple(original.shape), self.directions.rank).to(
                original.device
            )
            return self._take(original).copy_(
                torch.add(original.to(torch.float32), z, alpha=self.scale)
            )  # never in place
        return perturbed_copy(original, name, self.seed, self.scale, self.noise, out=self._take(original))

    def _take(self, like: torch.Tensor) -> torch.Tensor:
        free = self._pool.get((like.shape, like.dtype, like.device))
        return free.pop() if free else torch.empty(like.shape, dtype=like.dtype, device=like.device)

    def _restore(self, p: torch.nn.Parameter, original: torch.Tensor) -> None:
        buf = p.data
        p.data = original
        self._pool.setdefault((buf.shape, buf.dtype, buf.device), []).append(buf)

    def unexercised(self) -> list[str]:
        """Trainable tensors that the last forward inside the context never used."""
        return sorted(name for pid, name in self.names.items() if pid not in self._exercised)


def spsa_estimate(
    loss_fn: Callable[[], torch.Tensor | float], perturbation: Perturbation, seed: int, eps: float
) -> tuple[float, float, float]:
    """(g, L+, L-) with g = (L(theta + eps z) - L(theta - eps z)) / (2 eps), theta untouched."""
    with torch.no_grad():
        with perturbation(seed, eps):
            lp = float(loss_fn())
        with perturbation(seed, -eps):
            lm = float(loss_fn())
    return (lp - lm) / (2.0 * eps), lp, lm
