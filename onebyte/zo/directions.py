"""Direction families: ``dense`` (protocol v1) and ``lowrank:r`` (protocol v2).

``dense``: z for every trainable tensor is one window of the noise table (onebyte.zo.noise).

``lowrank:r``: for every trainable tensor with exactly two dimensions (m, p) (the weights of
Linear, Embedding, tied output heads, GPT-2's Conv1D: whatever the module, the tensor's own
stored shape decides),

    z = sum_{l < r} a_l b_l^T,   a_l in {+1,-1}^m,  b_l in {+1,-1}^p,

with a_l the table window of length m starting at ``factor_offset(seed, name, "a", l)`` and b_l
the window of length p at ``factor_offset(seed, name, "b", l)``. Every other tensor (norm scales,
biases) keeps its dense window. A perturbed forward needs no copy of a matrix (x W^T + eps (x.b) a^T,
EGGROLL), and the sum of a round's rank-1 terms is one matrix product (onebyte.zo.exact).

Specified in docs/PROTOCOL.md section 16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from onebyte.zo.noise import NoiseTable, tensor_offset, tensor_offsets

MAX_RANK = 16
_PATTERN = re.compile(r"^(dense|lowrank:([1-9][0-9]*))$")


@dataclass(frozen=True)
class Directions:
    """A parsed ``directions`` manifest field: rank 0 means dense."""

    rank: int = 0

    @property
    def name(self) -> str:
        return "dense" if self.rank == 0 else f"lowrank:{self.rank}"

    @property
    def lowrank(self) -> bool:
        return self.rank > 0

    @property
    def protocol_version(self) -> int:
        return 1 if self.rank == 0 else 2

    def is_lowrank(self, tensor: torch.Tensor) -> bool:
        """Which tensors get low-rank directions: exactly the 2-D ones."""
        return self.rank > 0 and tensor.dim() == 2

    @classmethod
    def parse(cls, text: str) -> Directions:
        m = _PATTERN.match(str(text))
        if not m or (m.group(2) and int(m.group(2)) > MAX_RANK):
            raise ValueError(
                f"unknown directions {text!r}: expected 'dense' or 'lowrank:<r>' with 1 <= r <= {MAX_RANK}"
            )
        return cls(int(m.group(2)) if m.group(2) else 0)


def factor_offset(seed: int, name: str, factor: str, index: int, table_log2: int) -> int:
    """Start of factor ``factor`` ("a": rows, "b": columns) number ``index`` of tensor ``name``: the
    dense offset (section 3) of the name ``name/factor/index``."""
    return tensor_offset(seed, f"{name}/{factor}/{index}", table_log2)


def windows(noise: NoiseTable, offsets: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """(len(offsets), length) int8: row k is the table window at offsets[k], elements start..start+length."""
    starts = (offsets.to(noise.device) + start) & (noise.size - 1)
    if length <= noise.size:
        # row o of this overlapping view is the window at o: one row copy per window, no per-element index
        rows = noise.signs.as_strided((noise.size - length + 1, length), (1, 1))
        inside = starts <= noise.size - length
        if bool(inside.all()):
            return rows.index_select(0, starts)
        out = torch.empty(len(starts), length, dtype=noise.signs.dtype, device=noise.device)
        out[inside] = rows.index_select(0, starts[inside])
        wrap = torch.nonzero(~inside).flatten()
        out[wrap] = noise.signs[
            (starts[wrap].view(-1, 1) + torch.arange(length, device=noise.device)) & (noise.size - 1)
        ]
        return out
    idx = starts.view(-1, 1) + torch.arange(length, dtype=torch.int64, device=noise.device).view(1, -1)
    return noise.signs[idx & (noise.size - 1)]


def factor_offsets(noise: NoiseTable, seeds: list[int], name: str, factor: str, rank: int) -> torch.Tensor:
    """Offsets of every (seed, l) factor, seed-major: entry k*rank + l."""
    return torch.stack(
        [tensor_offsets(seeds, f"{name}/{factor}/{index}", noise.table_log2) for index in range(rank)], 1
    ).reshape(-1)


def factors(
    noise: NoiseTable, seed: int, name: str, shape: tuple[int, int], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B): int8 matrices (m, r) and (p, r) whose columns are a_l and b_l."""
    m, p = shape
    a = windows(noise, factor_offsets(noise, [seed], name, "a", rank), 0, m).t()
    b = windows(noise, factor_offsets(noise, [seed], name, "b", rank), 0, p).t()
    return a, b


def lowrank_direction(noise: NoiseTable, seed: int, name: str, shape: tuple[int, int], rank: int) -> torch.Tensor:
    """z = A B^T materialized as float32 (integers in [-r, r], exact): for tests and the copy-based estimate."""
    a, b = factors(noise, seed, name, shape, rank)
    return a.to(torch.float32) @ b.to(torch.float32).t()
