"""What this peer's replica has reached in the run, typed, in one place.

The round applier moves it forward one round at a time; catch-up and repair may set it back or
jump it to a state they checked. Everything else (voting, the loop, the report) only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from onebyte.coordinator_free.seedlog import SeedLog
from onebyte.peer.replica import Replica


@dataclass(frozen=True)
class Base:
    """A state to recompute from (PROTOCOL §14): round, hash, and where its tensors are (None: the
    initial weights, rebuilt from the manifest; a path: a checkpoint file; a dict: in memory)."""

    round: int
    sha256: str
    tensors: dict[str, torch.Tensor] | Path | None = field(default=None, compare=False, hash=False)


@dataclass
class ReplicaState:
    replica: Replica
    seedlog: SeedLog
    applied: int = -1  # the last round applied to the weights
    hashes: dict[int, str] = field(default_factory=dict)  # hash round -> own weight hash after it
    verified: set[tuple[int, str]] = field(default_factory=set)  # own states a voter or a recomputation confirmed
    anchor: Base | None = None  # a state accepted whole (an installed checkpoint), a base to recompute from

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the replica: its trainable tensors and rule state (an anchor outlives later rounds)."""
        return {name: t.detach().cpu().clone() for name, t in self.replica.state_tensors()}

    def jumped_to(self, round_: int, sha256: str) -> None:
        """The weights now hold round ``round_`` with this hash (an installed or adopted state): own
        hashes of later rounds are no longer this replica's."""
        self.applied = round_
        self.hashes = {k: v for k, v in self.hashes.items() if k < round_} | {round_: sha256}
