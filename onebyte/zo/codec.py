"""The one-byte code for a projected gradient g.

Byte b = (sign << 7) | m. m = 0 is zero; m in 1..127 is the magnitude
2**(min_exp + (m - 1) / steps_per_octave), a logarithmic grid (about 9% apart for 8 steps per
octave, so at most ~4.4% relative error inside the range). Magnitudes above the top code are
clipped to it (this also bounds what one contribution can do); magnitudes below half the
smallest code become 0. NaN and inf have no code: such a contribution is not made.

Only ``decode`` must be bit-exact across implementations; it is a table of float32 values
(listed in docs/PROTOCOL.md). ``encode`` runs only at the sender.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np

MAX_MAG = 127
_LOG8_NAME = re.compile(r"log8:(0|-?[1-9][0-9]*):([1-9][0-9]*)")


@dataclass(frozen=True)
class ByteCodec:
    min_exp: int = -8
    steps_per_octave: int = 8

    def __post_init__(self) -> None:
        if not -40 <= self.min_exp <= 20:
            raise ValueError(f"codec min_exp must be in [-40, 20], got {self.min_exp}")
        if not 1 <= self.steps_per_octave <= 64:
            raise ValueError(f"codec steps_per_octave must be in [1, 64], got {self.steps_per_octave}")
        if self.min_exp * self.steps_per_octave + (MAX_MAG - 1) >= 128 * self.steps_per_octave:
            # the top magnitude 2^(min_exp + 126/S) would be infinite in binary32
            raise ValueError(
                f"codec log8:{self.min_exp}:{self.steps_per_octave} has magnitudes beyond float32's range "
                "(min_exp + 126 / steps_per_octave must be below 128)"
            )

    @property
    def name(self) -> str:
        return f"log8:{self.min_exp}:{self.steps_per_octave}"

    @cached_property
    def magnitudes(self) -> tuple[float, ...]:
        """Decoded |g| for m = 0..127, each exactly a float32 value."""
        mags = [0.0] + [2.0 ** (self.min_exp + (m - 1) / self.steps_per_octave) for m in range(1, MAX_MAG + 1)]
        return tuple(float(x) for x in np.asarray(mags, dtype=np.float32))

    @property
    def min_value(self) -> float:
        return self.magnitudes[1]

    @property
    def max_value(self) -> float:
        return self.magnitudes[MAX_MAG]

    def encode(self, g: float) -> int | None:
        """Nearest code in the log domain; None for NaN/inf (no contribution)."""
        if not math.isfinite(g):
            return None
        sign = 0x80 if g < 0 else 0
        a = abs(g)
        if a < self.min_value / 2:
            return 0
        m = math.floor(self.steps_per_octave * (math.log2(a) - self.min_exp) + 0.5) + 1
        return sign | min(max(m, 1), MAX_MAG)

    def decode(self, b: int) -> float:
        if not 0 <= b <= 255:
            raise ValueError(f"a code is one byte (0..255), got {b}")
        mag = self.magnitudes[b & 0x7F]
        return -mag if b & 0x80 else mag

    def roundtrip(self, g: float) -> float | None:
        b = self.encode(g)
        return None if b is None else self.decode(b)

    @classmethod
    def parse(cls, name: str) -> ByteCodec:
        # docs/PROTOCOL.md §5: exactly one spelling per codec (decimal, no '+', no leading zeros, no
        # spaces), so the manifest's string names the codec the same way for every implementation
        m = _LOG8_NAME.fullmatch(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(
                f"unknown codec {name!r}: expected 'log8:<min_exp>:<steps_per_octave>' (e.g. log8:-8:8) or 'float32'"
            )
        return cls(int(m.group(1)), int(m.group(2)))


class Float32Codec:
    """Sends g as a float32 (4 bytes): the full-precision baseline the byte code is measured against."""

    name = "float32"

    def encode(self, g: float) -> float | None:
        with np.errstate(over="ignore"):
            v = np.float32(g)
        return float(v) if np.isfinite(v) else None

    def decode(self, v: float) -> float:
        return float(np.float32(v))

    def roundtrip(self, g: float) -> float | None:
        return self.encode(g)


def g_max(codec: ByteCodec | Float32Codec) -> float:
    """The largest |g| a code can carry (PROTOCOL §15's bound): unbounded for float32."""
    return codec.max_value if isinstance(codec, ByteCodec) else math.inf


def make_codec(name: str) -> ByteCodec | Float32Codec:
    return Float32Codec() if name == "float32" else ByteCodec.parse(name)


def decode_codes(codes: bytes, codec: ByteCodec | Float32Codec) -> list[float]:
    """A record's code bytes as values (PROTOCOL §6): one byte each, or 4-byte little-endian float32s."""
    if isinstance(codec, Float32Codec):
        if len(codes) % 4:
            raise ValueError("float32 codes must be a multiple of 4 bytes")
        values = [codec.decode(v) for v in struct.unpack(f"<{len(codes) // 4}f", codes)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("non-finite float32 code")
        return values
    return [codec.decode(b) for b in codes]


def encode_codes(values: list, codec: ByteCodec | Float32Codec) -> bytes:
    if isinstance(codec, Float32Codec):
        return struct.pack(f"<{len(values)}f", *values)
    return bytes(values)
