"""Evaluate low-rank perturbations inside the forward pass: no copy, several rows per direction.

A batch of P * 2 * b rows evaluates P directions at once: rows [k*2b, k*2b + b) see
theta + eps z_k and rows [k*2b + b, (k+1)*2b) see theta - eps z_k (each row carries its own
(seed, sign)). The master weights are never written and no matrix is copied:

* Linear (weight (out, in), z = a b^T):   y += s*eps * (x . b) a^T      (EGGROLL's trick)
* GPT-2 Conv1D (weight (in, out)):        y += s*eps * (x . a) b^T
* Embedding (weight (V, H)):              row for token t += s*eps * a[t] b^T
  (a tied output head is a Linear that owns the same tensor: the same a, b by name)
* a trainable bias of those modules:      y += s*eps * z_bias
* any other module owning trainable tensors (norm scales: tiny): its forward is run again per
  row group with perturbed copies of its own tensors, exactly theta + s*eps*z for those rows.

The low-rank sums cost r * (in + out) multiply-adds per row and output, next to in * out for the
layer itself. Every module must map row i of its first input to row i of its output; one that
does not raises BatchLayoutError and the caller falls back to the copy-based Perturbation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from onebyte.zo.directions import Directions, factor_offsets, lowrank_direction, windows
from onebyte.zo.noise import NoiseTable, tensor_offsets
from onebyte.zo.perturb import perturbed_copy


class BatchLayoutError(RuntimeError):
    """A module's inputs or outputs are not one row per batch row: use the copy-based path."""


def _kind(module: torch.nn.Module, owned: dict[str, torch.nn.Parameter]) -> str | None:
    if isinstance(module, torch.nn.Linear) and set(owned) <= {"weight", "bias"}:
        return "linear"
    if isinstance(module, torch.nn.Embedding) and set(owned) == {"weight"} and module.max_norm is None:
        return "embedding"
    if (
        type(module).__name__ == "Conv1D"
        and set(owned) <= {"weight", "bias"}
        and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2
    ):
        return "conv1d"
    if not any(True for _ in module.children()):
        return "generic"
    return None


class InForward:
    """Context manager over a model: see the module docstring. ``params`` are the trainable
    (canonical name, tensor) pairs; tied tensors appear once and every owner uses their name."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: Sequence[tuple[str, torch.Tensor]],
        noise: NoiseTable,
        directions: Directions,
    ):
        self.noise, self.rank = noise, directions.rank
        self.directions = directions
        self.names = {id(p): name for name, p in params}
        self.owners: list[tuple[torch.nn.Module, str, dict[str, torch.nn.Parameter]]] = []
        self.unsupported: list[str] = []
        for mname, module in model.named_modules():
            owned = {attr: p for attr, p in module._parameters.items() if p is not None and id(p) in self.names}
            if not owned:
                continue
            kind = _kind(module, owned)
            if kind is None:
                self.unsupported.append(mname)
            self.owners.append((module, kind, owned))
        self.supported = not self.unsupported
        self._handles: list = []
        self._exercised: set[int] = set()
        self.seeds: list[int] = []
        self.rows = 0
        self.eps = 0.0

    def __call__(self, seeds: Sequence[int], rows: int, eps: float) -> InForward:
        """Directions ``seeds``, ``rows`` examples per sign: the batch has len(seeds) * 2 * rows rows."""
        self.seeds, self.rows, self.eps = list(seeds), int(rows), float(eps)
        return self

    @property
    def batch_rows(self) -> int:
        return len(self.seeds) * 2 * self.rows

    def __enter__(self) -> InForward:
        if not self.supported:
            raise BatchLayoutError(f"modules {self.unsupported[:3]} own trainable tensors and submodules")
        self._cache: dict = {}
        self._exercised.clear()
        for module, kind, owned in self.owners:
            if kind == "generic":
                self._handles.append(module.register_forward_hook(self._generic_hook(owned), with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(self._linear_hook(kind, owned)))
        self._prefill()
        return self

    def _prefill(self) -> None:
        """Make every tensor this context keeps (factors, signs, bias windows, the perturbed norm
        scales) before the forward starts. Made inside the forward, these small long-lived blocks
        land between the activations' temporaries and pin the heap: on SmolLM2 the process then
        peaked at 1.4-1.6x inference's memory; made first, at inference's (BENCHMARKS.md, Protocol v2)."""
        for _, kind, owned in self.owners:
            weight, bias = owned.get("weight"), owned.get("bias")
            if kind == "generic":
                for p in owned.values():
                    for k in range(len(self.seeds)):
                        for scale in (self.eps, -self.eps):
                            self._perturbed(p, k, scale)
                continue
            if weight is not None:
                self._factors(self.names[id(weight)], tuple(weight.shape), weight)
                self._signs(weight)
            if bias is not None:
                self._dense(self.names[id(bias)], bias.numel(), bias)

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._cache = {}

    def unexercised(self) -> list[str]:
        return sorted(name for pid, name in self.names.items() if pid not in self._exercised)

    # -- directions of this context, cached per tensor ----------------------------------------
    def _signs(self, like: torch.Tensor) -> torch.Tensor:
        key = ("signs", like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = torch.tensor([self.eps, -self.eps], dtype=like.dtype, device=like.device).view(
                1, 2, 1, 1
            )
        return self._cache[key]

    def _factors(self, name: str, shape: tuple[int, int], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as (P, m, r) and (P, p, r) in the activations' dtype."""
        key = ("ab", name, like.dtype)
        if key not in self._cache:
            P, r = len(self.seeds), self.rank
            m, p = shape
            a = windows(self.noise, factor_offsets(self.noise, self.seeds, name, "a", r), 0, m).view(P, r, m)
            b = windows(self.noise, factor_offsets(self.noise, self.seeds, name, "b", r), 0, p).view(P, r, p)
            self._cache[key] = (
                a.transpose(1, 2).to(device=like.device, dtype=like.dtype),
                b.transpose(1, 2).to(device=like.device, dtype=like.dtype),
            )
        return self._cache[key]

    def _dense(self, name: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        key = ("z", name, like.dtype)
        if key not in self._cache:
            self._cache[key] = windows(
                self.noise, tensor_offsets(self.seeds, name, self.noise.table_log2), 0, numel
            ).to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _check_rows(self, t: torch.Tensor, where: str) -> None:
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != self.batch_rows:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise BatchLayoutError(f"{where}: expected {self.batch_rows} rows first, got {shape}")

    # -- hooks ---------------------------------------------------------------------------------
    def _linear_hook(self, kind: str, owned: dict[str, torch.nn.Parameter]):
        weight, bias = owned.get("weight"), owned.get("bias")

        def hook(module, args, out):
            x = args[0]
            P, r = len(self.seeds), self.rank
            if kind == "embedding" and x.shape[0] == 1 and self.batch_rows > 1:  # e.g. GPT-2's position ids
                x = x.expand(self.batch_rows, *x.shape[1:])
                out = out.expand(self.batch_rows, *out.shape[1:]).contiguous()  # a row of its own per batch row
            self._check_rows(x, type(module).__name__)
            self._check_rows(out, type(module).__name__)
            if not out.is_contiguous():
                out = out.contiguous()
            signs = self._signs(out)
            if weight is not None:
                self._exercised.add(id(weight))
                a, b = self._factors(self.names[id(weight)], tuple(weight.shape), out)
                if kind == "embedding":
                    ids = x.reshape(P, -1)
                    u = torch.gather(a, 1, ids.unsqueeze(-1).expand(-1, -1, r))  # (P, N, r): a[t]
                    right = b
                else:
                    left, right = (b, a) if kind == "linear" else (a, b)
                    u = torch.bmm(x.reshape(P, -1, x.shape[-1]), left)  # (P, N, r)
                u = (u.view(P, 2, -1, r) * signs).view(P, -1, r)
                out3 = out.view(P, -1, out.shape[-1])
                if r == 1:  # the outer product added in one pass, no (rows x out) temporary
                    out3.addcmul_(u, right.transpose(1, 2))
                else:
                    out3.baddbmm_(u, right.transpose(1, 2))
            if bias is not None:
                self._exercised.add(id(bias))
                zb = self._dense(self.names[id(bias)], bias.numel(), out)  # (P, out)
                out.view(P, 2, -1, out.shape[-1]).add_(signs * zb[:, None, None, :])
            return out

        return hook

    def _perturbed(self, p: torch.nn.Parameter, k: int, scale: float) -> torch.Tensor:
        name = self.names[id(p)]
        key = ("copy", name, k, scale)
        if key not in self._cache:
            if self.directions.is_lowrank(p):
                z = lowrank_direction(self.noise, self.seeds[k], name, tuple(p.shape), self.rank).to(p.device)
                self._cache[key] = (p.detach().to(torch.float32) + scale * z).to(p.dtype)
            else:
                self._cache[key] = perturbed_copy(p.detach(), name, self.seeds[k], scale, self.noise)
        return self._cache[key]

    def _generic_hook(self, owned: dict[str, torch.nn.Parameter]):
        def hook(module, args, kwargs, out):
            self._check_rows(out, type(module).__name__)
            B, b = self.batch_rows, self.rows
            pieces = []
            for k in range(len(self.seeds)):
                for s, scale in enumerate((self.eps, -self.eps)):
                    lo = k * 2 * b + s * b
                    cut = [
                        a[lo : lo + b] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == B else a
                        for a in args
                    ]
                    kw = {
                        key: v[lo : lo + b] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B else v
                        for key, v in kwargs.items()
                    }
                    originals = {attr: p.data for attr, p in owned.items()}
                    try:
                        for p in owned.values():
                            p.data = self._perturbed(p, k, scale)
                        pieces.append(module.forward(*cut, **kw))
                    finally:
                        for attr, p in owned.items():
                            p.data = originals[attr]
            for p in owned.values():
                self._exercised.add(id(p))
            return torch.cat(pieces, 0)

        return hook
