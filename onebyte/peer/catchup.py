"""How a peer that is behind (or wrong) chooses its way back to the swarm's exact weights.

Two ways, from other peers over p2p (onebyte.p2p.transfer):
  log         replay every missed round from a peer's seed log: cost grows with the gap;
  checkpoint  download a peer's newest checkpoint, check its hash against the swarm's hash
              records, then replay only the rounds after it: cost is about flat in the gap.
The estimate below picks the cheaper, so catch-up time does not grow with the run's length.
A peer whose own state is wrong (repair) may not replay from it, only from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BANDWIDTH = 20e6  # bytes/s assumed for a checkpoint download until one is measured


@dataclass(frozen=True)
class Source:
    peer_id: str  # onebyte id (Ed25519 public key hex)
    p2p_id: str  # libp2p peer id, for the transfer handlers
    log: tuple[int, int] | None  # contiguous rounds in its seed log
    contributions: int  # contributions in that span
    checkpoint: dict | None  # {"round", "sha256", "bytes"} of its newest checkpoint

    @property
    def contribs_per_round(self) -> float:
        return self.contributions / (self.log[1] - self.log[0] + 1) if self.log else 0.0


@dataclass(frozen=True)
class Plan:
    method: str  # "log" or "checkpoint"
    source: Source
    first_replayed: int
    seconds: float  # estimated


def plans(applied: int, target: int, sources: list[Source], *, apply_seconds_per_contribution: float, bandwidth: float,
          state_valid: bool = True) -> list[Plan]:
    """Every way to reach ``target`` from ``applied``, cheapest first (a tail the sources' logs do
    not cover is read from the DHT afterwards by the normal loop, at the same cost either way)."""
    # the median source's contributions per round: one source inventing a count moves no estimate
    rates = sorted(s.contribs_per_round for s in sources)
    cpr = rates[len(rates) // 2] if rates else 0.0

    def replay(first: int) -> float:
        return max(0, target - first + 1) * cpr * apply_seconds_per_contribution

    out = []
    for s in sources:
        if state_valid and s.log and s.log[0] <= applied + 1 <= s.log[1]:
            out.append(Plan("log", s, applied + 1, replay(applied + 1)))
        ck = s.checkpoint
        if ck and (ck["round"] > applied or not state_valid) and (s.log is None or s.log[0] <= ck["round"] + 1):
            out.append(Plan("checkpoint", s, ck["round"] + 1, ck["bytes"] / bandwidth + replay(ck["round"] + 1)))
    return sorted(out, key=lambda p: (p.seconds, p.method != "log"))
