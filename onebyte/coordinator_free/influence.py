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

from onebyte.coordinator_free.agreement import RoundSet
from onebyte.zo.codec import ByteCodec, Float32Codec, decode_codes, g_max

WINDOW = 256  # recent codes kept per peer
MIN_CODES = 32  # judge a peer only after this many codes
SATURATED_SHARE = 0.5  # a suspect sends at least this share of codes at the codec's largest magnitude...
SWARM_SATURATED_SHARE = 0.1  # ...while the other peers, together, send at most this share
MAGNITUDE_RATIO = 8.0  # or its median |g| is this many times the median of the other peers' medians
FLOOD_NEW_KEYS = 8  # a round in which at least this many keys appear for the first time...
FLOOD_SATURATED_SHARE = 0.5  # ...and at least this share of their codes is saturated flags every one of them
MAX_KEYS = 4096  # keys remembered (oldest forgotten first): a flood of fresh keys cannot grow memory without bound


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
        self.g_max = g_max(codec)
        self.recent: dict[str, deque[float]] = {}
        self.flood: dict[str, Suspect] = {}  # keys flagged in a flood round (kept while remembered)

    def observe(self, rs: RoundSet) -> None:
        """Remember each key's |g|. A round where many keys appear for the first time, most of their
        codes saturated, flags all of them: fresh keys are free, so a Sybil flood outnumbers the
        swarm and per-key comparisons with "the others" (suspects) would see nothing unusual."""
        new: dict[str, list[float]] = {}
        for peer, codes in rs.records:
            mags = [abs(v) for v in decode_codes(codes, self.codec)]
            if peer not in self.recent:
                new[peer] = mags
            window = self.recent.pop(peer, None) or deque(maxlen=WINDOW)  # re-inserted: least recently seen first
            window.extend(mags)
            self.recent[peer] = window
        if len(new) >= FLOOD_NEW_KEYS and self.g_max < float("inf"):
            codes = [x for v in new.values() for x in v]
            share = sum(1 for x in codes if x >= self.g_max) / len(codes)
            if share >= FLOOD_SATURATED_SHARE:
                old = [statistics.median(v) for p, v in self.recent.items() if p not in new and v]
                swarm_med = statistics.median(old) if old else 0.0
                for p, v in new.items():
                    self.flood[p] = Suspect(
                        p,
                        sum(1 for x in v if x >= self.g_max) / len(v),
                        statistics.median(v),
                        swarm_med,
                        f"one of {len(new)} new keys in round {rs.round} sending saturated codes",
                    )
        while len(self.recent) > MAX_KEYS:
            gone = next(iter(self.recent))
            del self.recent[gone]
            self.flood.pop(gone, None)

    def suspects(self) -> list[Suspect]:
        judged = {p: list(v) for p, v in self.recent.items() if len(v) >= MIN_CODES and p not in self.flood}
        if len(judged) < 2:
            return list(self.flood.values())
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
        return out + list(self.flood.values())
