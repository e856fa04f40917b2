"""Wall-clock rounds: when a round's contributions are due and when it is final.

Round r covers [start + r*R, start + (r+1)*R). A peer publishes its record for r by
``publish_by(r) = close(r) - margin`` and applies r at ``final_at(r) = close(r) + settle``, when
every honest record has been stored (settle covers DHT latency and the clock skew hivemind
tolerates). Nothing here talks to the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RoundClock:
    start: float
    round_seconds: float
    margin: float
    settle: float

    @classmethod
    def of(cls, manifest) -> RoundClock:
        """The clock a run's manifest defines (ValueError for timing that makes none)."""
        m = manifest
        return cls(m.start_time, m.round_seconds, m.publish_margin, m.settle_seconds)

    def __post_init__(self) -> None:
        if not (self.round_seconds > 0 and 0 <= self.margin < self.round_seconds and self.settle >= 0):
            raise ValueError(f"bad round timing: {self}")

    def round_at(self, t: float) -> int:
        """The round in progress at time t (-1 before the run starts)."""
        return max(-1, math.floor((t - self.start) / self.round_seconds))

    def open_at(self, r: int) -> float:
        return self.start + r * self.round_seconds

    def close(self, r: int) -> float:
        return self.start + (r + 1) * self.round_seconds

    def publish_by(self, r: int) -> float:
        return self.close(r) - self.margin

    def final_at(self, r: int) -> float:
        return self.close(r) + self.settle

    def last_final(self, t: float) -> int:
        """The newest round that is final at time t (-1 if none)."""
        return max(-1, math.floor((t - self.settle - self.start) / self.round_seconds) - 1)
