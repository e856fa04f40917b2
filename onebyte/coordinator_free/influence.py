"""How much each peer pushes the weights, against the swarm: bounded by the codec, watched here.

A contribution moves the weights by lr * |g| / n along a ±1 direction, and the one-byte codec
clips |g| at its largest magnitude, so one peer's share of a round is at most
K * lr * g_max / n (docs/PROTOCOL.md §15). Within that bound a malicious peer can still push as
hard as allowed every time. This monitor keeps each peer's recent decoded |g| and flags one whose
codes are mostly saturated while the rest of the swarm's are not, or whose typical magnitude is
far above the swarm's. It reports and counts; it does not exclude anyone, because exclusion that
not every replica computes identically would break agreement (allowlists do that, §12).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from onebyte.coordinator_free.agreement import RoundSet, decode_codes
from onebyte.zo.codec import ByteCodec, Float32Codec

WINDOW = 256  # recent codes kept per peer
MIN_CODES = 32  # judge a peer only after this many codes
SATURATED_SHARE = 0.5  # a suspect sends at least this share of codes at the codec's largest magnitude...
SWARM_SATURATED_SHARE = 0.1  # ...while the other peers, together, send at most this share
MAGNITUDE_RATIO = 8.0  # or its median |g| is this many times the median of the other peers' medians


@dataclass(frozen=True)
class Suspect:
    peer_id: str
    saturated_share: float
    median_magnitude: float
    swarm_median_magnitude: float
    reason: str


class InfluenceMonitor:
    def __init__(self, codec: ByteCodec | Float32Codec):
        self.codec = codec
        self.g_max = codec.max_value if isinstance(codec, ByteCodec) else float("inf")
        self.recent: dict[str, deque[float]] = {}

    def observe(self, rs: RoundSet) -> None:
        for peer, codes in rs.records:
            self.recent.setdefault(peer, deque(maxlen=WINDOW)).extend(abs(v) for v in decode_codes(codes, self.codec))

    def suspects(self) -> list[Suspect]:
        judged = {p: list(v) for p, v in self.recent.items() if len(v) >= MIN_CODES}
        if len(judged) < 2:
            return []
        medians = {p: statistics.median(v) for p, v in judged.items()}
        saturated = {p: sum(1 for x in v if x >= self.g_max) for p, v in judged.items()}
        out = []
        for p, v in judged.items():
            others = [q for q in judged if q != p]
            swarm_sat = sum(saturated[q] for q in others) / sum(len(judged[q]) for q in others)
            swarm_med = statistics.median(medians[q] for q in others)
            share = saturated[p] / len(v)
            if share >= SATURATED_SHARE and swarm_sat <= SWARM_SATURATED_SHARE:
                out.append(Suspect(p, share, medians[p], swarm_med, "saturated codes"))
            elif len(others) >= 2 and swarm_med > 0 and medians[p] > MAGNITUDE_RATIO * swarm_med:
                out.append(Suspect(p, share, medians[p], swarm_med, "magnitudes far above the swarm's"))
        return out
