"""Seniority: how long a key has counted in this run, read from the seed log, so that a flood of fresh
keys cannot push the run's established peers out of a capped round (docs/PROTOCOL.md §15).

Keys are free, so no rule may trust a key for existing. What a key cannot fake is history: a key is
in good standing in round q if round q's logged set holds its record and at most half of its codes
were held back there (clipped by the round's limit, or saturated where nothing clips). Its
seniority at round r is the number of the W rounds before r in which it was in good standing.
Every replica computes it from the same logged entries, so it decides rounds identically; a Sybil
flood of extreme codes never gains any, and a new key gains it only through the few slots the rule
leaves to keys without it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from onebyte.coordinator_free.agreement import RobustRule, clip_limit, held_back
from onebyte.coordinator_free.seedlog import parse_line
from onebyte.zo.codec import ByteCodec, Float32Codec, decode_codes, g_max

History = Callable[[int], bytes | None]  # a round's seed-log entry, or None where this peer has none


def standing(line: bytes, codec: ByteCodec | Float32Codec, rule: RobustRule) -> frozenset[str]:
    """The keys in good standing in the round of this seed-log entry (its records were all kept)."""
    _, _, records = parse_line(line)
    decoded = [(p, decode_codes(codes, codec)) for p, codes in records]
    limit = clip_limit([v for _, vs in decoded for v in vs], rule)
    largest = g_max(codec)
    return frozenset(p for p, vs in decoded if 2 * sum(held_back(v, limit, largest) for v in vs) <= len(vs))


class SeniorityWindow:
    """Each key's seniority at a round, from the seed log. Standings are cached per entry (an entry a
    repair rewrites is read again), so a round costs W lookups, not W parses."""

    def __init__(self, rule: RobustRule, codec: ByteCodec | Float32Codec):
        assert rule.seniority_window is not None
        self.rule, self.codec, self.window = rule, codec, rule.seniority_window
        self._cache: dict[int, tuple[bytes, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def at(self, round_: int, history: History) -> tuple[dict[str, int], int]:
        """(seniority of every key with any, rounds of the window missing from ``history``)."""
        counts: Counter = Counter()
        missing = 0
        first = max(0, round_ - self.window)
        with self._lock:
            for q in range(first, round_):
                line = history(q)
                if line is None:
                    missing += 1
                    continue
                cached = self._cache.get(q)
                if cached is None or cached[0] != line:
                    cached = self._cache[q] = (line, standing(line, self.codec, self.rule))
                counts.update(cached[1])
            for q in [q for q in self._cache if q < first - self.window]:  # older than any window asked lately
                del self._cache[q]
        return dict(counts), missing
