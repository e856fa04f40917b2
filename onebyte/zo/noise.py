"""Perturbation directions that are the same bits on every device.

Torch's CPU and CUDA generators disagree (and CUDA's differs across GPU models), so z never comes
from a device RNG. Instead every run shares one table of Rademacher signs (+1/-1), generated once
on the CPU from SplitMix64, and a contribution's direction for a tensor is a window of that table
at an offset derived from the contribution's seed and the tensor's name (OpenAI ES's shared noise
table, with signs instead of Gaussians so that s*z is exact in every float format).
Applying a window is a streaming read of int8: cheaper than one plain copy of the weights.

Everything here is specified in docs/PROTOCOL.md (sections "Seeds" and "Noise table").
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
DEFAULT_TABLE_LOG2 = 25
MIN_TABLE_LOG2, MAX_TABLE_LOG2 = 12, 31


def mix64(x: int) -> int:
    """SplitMix64's finalizer (a bijection on 64-bit integers)."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def mix64_array(x: np.ndarray) -> np.ndarray:
    """mix64 on every element of a uint64 array (wrapping multiplies: call under np.errstate(over="ignore"))."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _lp(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def contribution_seed(run_id: str, peer_id: str, round_: int, index: int) -> int:
    """The 64-bit seed of one contribution: a pure function of who made it, when, and which."""
    if round_ < 0 or index < 0:
        raise ValueError(f"round and index must be non-negative, got {round_}, {index}")
    msg = b"onebyte/seed/v1" + _lp(run_id) + _lp(peer_id) + struct.pack("<QI", round_, index)
    return int.from_bytes(hashlib.sha256(msg).digest()[:8], "little")


@lru_cache(maxsize=4096)
def name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(b"onebyte/tensor/v1" + name.encode("utf-8")).digest()[:8], "little")


def tensor_offset(seed: int, name: str, table_log2: int) -> int:
    """Where in the table the window for (contribution, tensor) starts."""
    return mix64(seed ^ name_key(name)) & ((1 << table_log2) - 1)


def tensor_offsets(seeds: list[int], name: str, table_log2: int) -> torch.Tensor:
    """tensor_offset for every seed of a round at once (int64): a round applies every seed to every tensor."""
    with np.errstate(over="ignore"):
        mixed = mix64_array(np.array(seeds, dtype=np.uint64) ^ np.uint64(name_key(name)))
    return torch.from_numpy((mixed & np.uint64((1 << table_log2) - 1)).astype(np.int64))


@lru_cache(maxsize=2)
def _table_cpu(table_log2: int, table_key: int) -> torch.Tensor:
    if not MIN_TABLE_LOG2 <= table_log2 <= MAX_TABLE_LOG2:
        raise ValueError(f"table_log2 must be in [{MIN_TABLE_LOG2}, {MAX_TABLE_LOG2}], got {table_log2}")
    words = 1 << (table_log2 - 6)
    with np.errstate(over="ignore"):
        j = np.arange(1, words + 1, dtype=np.uint64)
        state = np.uint64(table_key & MASK64) + j * np.uint64(GOLDEN)
        w = mix64_array(state)
    bits = np.unpackbits(w.astype("<u8").view(np.uint8), bitorder="little")
    signs = bits.astype(np.int8) * np.int8(2) - np.int8(1)
    return torch.from_numpy(signs)


class NoiseTable:
    """The run's shared table of +1/-1 signs, resident on one device.

    ``T = 2**table_log2`` entries (int8, T bytes). Entry i is bit (i mod 64) of the
    (i div 64 + 1)-th SplitMix64 output for state ``table_key``: +1 if set, -1 if not.
    """

    def __init__(self, table_log2: int = DEFAULT_TABLE_LOG2, table_key: int = 0, device: str | torch.device = "cpu"):
        self.table_log2 = int(table_log2)
        self.table_key = int(table_key)
        self.size = 1 << self.table_log2
        self.device = torch.device(device)
        self.signs = _table_cpu(self.table_log2, self.table_key).to(self.device)
        # Streaming chunk: big enough that Python overhead vanishes, small enough to stay in cache.
        self.chunk = 1 << 20 if self.device.type == "cpu" else 1 << 24

    def offset(self, seed: int, name: str) -> int:
        return tensor_offset(seed, name, self.table_log2)

    def segments(self, offset: int, numel: int) -> Iterator[tuple[int, int, int]]:
        """(start in tensor, start in table, length) pieces covering z[0:numel], wrapping the table."""
        i = 0
        while i < numel:
            t = (offset + i) & (self.size - 1)
            n = min(numel - i, self.size - t, self.chunk)
            yield i, t, n
            i += n

    def direction(self, seed: int, name: str, numel: int) -> torch.Tensor:
        """z for one tensor as a flat int8 tensor (materialized: for tests and small tensors only)."""
        o = self.offset(seed, name)
        idx = (torch.arange(numel, dtype=torch.int64, device=self.device) + o) & (self.size - 1)
        return self.signs[idx]
