"""The round applier: the one path by which a decided round reaches the weights.

A live round read from the DHT, a round replayed from a seed log (a restart, a catch-up) and a
round recomputed during a repair all end here, so they cannot apply a set differently.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

import torch

from onebyte.coordinator_free.agreement import RoundSet
from onebyte.coordinator_free.influence import InfluenceMonitor
from onebyte.coordinator_free.policy import RoundPolicy
from onebyte.metrics.peer import PeerMetrics
from onebyte.peer.state import ReplicaState


def estimate_apply_cost(replica) -> float:
    """Seconds to apply one contribution, before any was applied: ~1.5 copies of the trainable
    weights (BENCHMARKS.md (b)), timed on the largest tensor."""
    _, big = max(replica.params, key=lambda kv: kv[1].numel())
    scratch = torch.empty_like(big)
    t0 = time.perf_counter()
    scratch.copy_(big)
    return 1.5 * (time.perf_counter() - t0) * replica.num_trainable / big.numel()


class RoundApplier:
    def __init__(
        self,
        state: ReplicaState,
        policy: RoundPolicy,
        *,
        peer_id: str,
        tag: str,
        stats: Counter,
        metrics: PeerMetrics,
        observers: Iterable[Callable[[RoundSet], None]] = (),
    ):
        self.state, self.policy, self.peer_id, self.tag = state, policy, peer_id, tag
        self.stats, self.metrics = stats, metrics
        self.influence = InfluenceMonitor(policy.codec)
        self.observers = [self.influence.observe, *observers]  # e.g. hash voting counts each round's contributors
        self.seconds_per_contribution = estimate_apply_cost(state.replica)  # refined by every round applied

    def apply(self, rs: RoundSet, *, live: bool) -> float:
        """Apply the next round and record it (seed log, observers, counters); returns its seconds."""
        st = self.state
        assert rs.round == st.applied + 1, (rs.round, st.applied)
        t0 = time.perf_counter()
        st.replica.apply(rs.contributions)
        seconds = time.perf_counter() - t0
        if rs.contributions:
            self.seconds_per_contribution = 0.8 * self.seconds_per_contribution + 0.2 * seconds / len(rs.contributions)
        st.applied = rs.round
        st.seedlog.put(rs.round, rs.digest, rs.records)
        for observe in self.observers:
            observe(rs)
        mine = rs.counts.get(self.peer_id, 0)
        self.stats["applied_local"] += mine
        self.stats["applied_remote"] += len(rs.contributions) - mine
        self.stats["rounds_applied"] += 1
        latency = time.time() - self.policy.clock.close(rs.round) if live else None
        self.metrics.on_applied(rs.round, mine, len(rs.contributions) - mine, seconds, latency)
        return seconds

    def replay(self, line: bytes) -> None:
        """Apply the next round from a seed-log entry (a restart or a catch-up)."""
        self.apply(self.policy.replay(line), live=False)

    def recompute(self, lines: Iterable[bytes], first: int, *, rehash: bool) -> None:
        """Apply log entries for rounds first, first+1, ... to the weights alone (a repair tries a
        history before adopting it): nothing else (log, counters, votes) changes. With ``rehash``
        the history is this peer's own again, so its hashes of hash rounds on the way are
        recomputed (those taken from damaged weights are replaced)."""
        st = self.state
        for r, line in enumerate(lines, start=first):
            st.replica.apply(self.policy.replay(line).contributions)
            if rehash and r in st.hashes:
                st.hashes[r] = st.replica.sha256()
