"""Making contributions: draw a batch, estimate (L+ - L-)/2eps along a seeded direction, keep the
byte, and publish a round's bytes as one signed record before its deadline.

The loop calls ``step`` whenever it has nothing more urgent to do; one call makes at most one
contribution (or one population-batched group of them), or publishes one round.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from tqdm import tqdm

from onebyte.coordinator_free.policy import RoundPolicy
from onebyte.dht.client import DHTUnavailable, RecordClient
from onebyte.dht.records import ContributionRecord
from onebyte.metrics.peer import PeerMetrics
from onebyte.peer.replica import Replica
from onebyte.peer.train import batch_indices
from onebyte.peer.voting import LOG_TTL
from onebyte.zo import contribution_seed
from onebyte.zo.codec import encode_codes

log = logging.getLogger("onebyte.peer")

# Work ahead on round r+1 only once the weights lack at most this many rounds before it. A peer that fills its
# quota early would otherwise make round r+1's contributions while round r-1 settles, on weights two rounds old:
# with a stateful rule and a clean round mean that makes the weights oscillate (bench/scaling.py --stale 2:
# 0.742 balanced accuracy after 150 rounds of make demo's recipe, against 0.808 with --stale 1).
AHEAD_STALENESS = 1


class Contributor:
    def __init__(
        self,
        replica: Replica,
        task,
        pool: list[int],
        policy: RoundPolicy,
        client: RecordClient,
        *,
        peer_id: str,
        tag: str,
        seed: int,
        batch_size: int,
        population: int,
        stats: Counter,
        metrics: PeerMetrics,
    ):
        self.replica, self.task, self.pool, self.policy, self.client = replica, task, pool, policy, client
        self.peer_id, self.tag, self.seed, self.batch_size, self.population = peer_id, tag, seed, batch_size, population
        self.stats, self.metrics = stats, metrics
        self.codes: dict[int, list] = {}  # round -> codes made for it, not yet published
        self.published: set[int] = set()
        self.seconds = 0.0  # running estimate of one contribution's duration
        self.reprobed = -1  # last round in which a too-slow estimate was relaxed
        self.last_loss: float | None = None

    def warm_up(self, progress: bool = False) -> None:
        """Pays one-time costs before the first contribution: with a frozen trunk, runs every example of the pool
        through it once (so this peer never contributes at the trickle of an uncached trunk: a stateful rule would
        take a few rounds of a few noisy contributions for the signal's scale, and learn slowly for a hundred rounds,
        BENCHMARKS.md "Swarm demo"); then one unpublished estimate measures how long a contribution takes."""
        trunk = getattr(self.task, "trunk", None)
        if trunk is not None:
            t0 = time.perf_counter()
            starts = range(0, len(self.pool), self.batch_size)
            for i in tqdm(starts, desc=f"[{self.tag}] trunk cache", unit="batch", disable=not progress):
                trunk.warm(self.replica.to_device(self.task.train_batch(self.pool[i : i + self.batch_size])))
            took = time.perf_counter() - t0
            log.info("[%s] round=-1 trunk cached for %d examples in %.1fs", self.tag, len(self.pool), took)
        batch = self.replica.to_device(self.task.train_batch(self.pool[: self.batch_size]))
        t0 = time.perf_counter()
        self.replica.estimate_on(0, batch, self.task.loss)
        self.seconds = time.perf_counter() - t0

    def waiting(self, r: int) -> bool:
        """Round r has codes that must go out by its deadline (the loop wakes up for it)."""
        return bool(self.codes.get(r)) and r not in self.published

    def step(self, now: float, last_round: float, applied: int, lag_allowed: int, fresh: bool = False) -> bool:
        """Make one contribution, or publish a round's codes; False if there is nothing to do.

        Once the current round is closed to this peer (published, full, or too close to its
        deadline), it works ahead on the next one, whose codes go out when that round is open: the
        publish margin and the wait for a round to settle are not idle time (BENCHMARKS.md, "Swarm
        demo"), once its weights lack at most AHEAD_STALENESS rounds before that round. It contributes
        on weights at most ``lag_allowed`` rounds older than the round it works for, or while ``fresh``
        (it holds the newest final round but ``max_lag``): where reading and applying a round takes
        longer than the settle window (short rounds, a slow network), the rule that counts from the
        current round alone would stop every peer for good (BENCHMARKS.md (i))."""
        clock, cap = self.policy.clock, self.policy.contribs_per_round
        r = clock.round_at(now)
        for q in sorted(self.codes):
            if (
                q not in self.published
                and q <= r
                and (q < r or len(self.codes[q]) >= cap or now >= clock.publish_by(q))
            ):
                self.publish(q)
                return True
        if r in self.published:
            self.codes.pop(r, None)
        target = r
        if r in self.published or len(self.codes.get(r, ())) >= cap or now + self.seconds > clock.publish_by(r):
            target = r + 1  # work ahead
        if target < 0 or target > last_round or (applied < target - lag_allowed and not fresh):
            return False
        if target > r and applied < target - 1 - AHEAD_STALENESS:
            return False  # work ahead only on weights that lack at most AHEAD_STALENESS rounds before the target
        codes = self.codes.setdefault(target, [])
        if target in self.published or len(codes) >= cap:
            return False
        if now + self.seconds > clock.publish_by(target):
            if not codes and self.reprobed != target:  # re-probe once a round: estimates taken under load go stale
                self.reprobed = target
                self.seconds *= 0.7
            return False  # this contribution would miss the deadline
        r = target
        t0 = time.perf_counter()
        # the next k indices of this round, each on its own batch; with k > 1 and low-rank directions
        # all 2k evaluations share one forward (population batching), otherwise they run one by one
        k = max(1, min(self.population, cap - len(codes)))
        seeds = [contribution_seed(self.policy.run_id, self.peer_id, r, len(codes) + j) for j in range(k)]
        batches = []
        for _ in range(k):
            attempt = self.stats["attempts"]  # a retry after a non-finite loss draws another batch
            self.stats["attempts"] += 1
            idx = batch_indices(self.seed, self.peer_id, r, attempt, len(self.pool), self.batch_size)
            batches.append(self.replica.to_device(self.task.train_batch([self.pool[i] for i in idx])))
        estimates = self.replica.estimate_many(seeds, batches, self.task.loss)  # one by one where the run is dense
        spent = time.perf_counter() - t0
        self.stats["contributing_seconds"] += spent
        self.seconds = 0.7 * self.seconds + 0.3 * spent if self.seconds else spent
        if time.time() > clock.publish_by(r) or r in self.published:
            self.stats["missed_deadline"] += k
            return True
        for g, lp, lm in estimates:
            wire = self.replica.encode(g)
            if wire is None:  # the seeds after it were drawn for later indices: they are made again from this index
                self.stats["skipped_nonfinite"] += 1
                log.warning("[%s] round=%d contribution skipped: non-finite loss (L+=%s, L-=%s)", self.tag, r, lp, lm)
                return True
            codes.append(wire)
            self.stats["made"] += 1
            self.stats["loss_sum"] += (lp + lm) / 2
            self.last_loss = (lp + lm) / 2
            self.metrics.on_contribution(spent / k, self.last_loss)
        return True

    def publish(self, r: int) -> None:
        """Round r's codes as one signed record, unless its deadline has passed."""
        self.published.add(r)
        self.published -= {q for q in self.published if q < r - 8}  # keep the bookkeeping bounded
        codes = self.codes.pop(r, None) or []
        if not codes:
            return
        if time.time() > self.policy.clock.publish_by(r) + self.policy.clock.margin / 2:
            self.stats["missed_deadline"] += len(codes)
            log.warning("[%s] round=%d %d contribution(s) not published: past the deadline", self.tag, r, len(codes))
            return
        rec = ContributionRecord(round=r, published_at=time.time(), codes=encode_codes(codes, self.replica.codec))
        try:
            ok = self.client.publish_contributions(self.policy.run_id, rec, self.policy.clock.close(r) + LOG_TTL)
        except DHTUnavailable as e:
            ok = False
            log.warning("[%s] round=%d publish failed: %s", self.tag, r, e)
        self.stats["published" if ok else "publish_failed"] += len(codes)
        if ok:
            self.metrics.on_published(len(codes), len(rec.codes))
