"""Hash voting: after every hash round a peer publishes its weight hash and reads the others'.

A peer that lost a vote does not take the majority's word: it verifies itself by recomputation
(onebyte.peer.repair). A vote of a key that contributed nothing lately does not count for
checkpoint admission (PROTOCOL §12, §14). When each hook runs:
  ``observe``     every applied round (live or replayed): who contributed;
  ``hash_round``  a live hash round was applied: remember its voters, publish the hash;
  ``check_due``   from the loop, half a round after a hash round is final, and again on a dispute;
  ``settle``      before the peer leaves: pending checks and disputes are decided, not repaired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from onebyte.coordinator_free.agreement import RoundSet, compare_hashes
from onebyte.coordinator_free.policy import RoundPolicy
from onebyte.dht.client import DHTUnavailable, RecordClient
from onebyte.dht.records import HashRecord
from onebyte.metrics.peer import PeerMetrics
from onebyte.peer.state import ReplicaState

log = logging.getLogger("onebyte.peer")

LOG_TTL = 6 * 3600.0  # records (contributions, hashes) stay readable this long for late joiners and repairs
HASH_READINGS = 4  # most readings of a disputed hash round's votes before deciding on what is there
VOTER_WINDOWS = 16  # a key votes on hash round q if it contributed to a round in (q - VOTER_WINDOWS * hash_every, q]
KEEP_HASH_ROUNDS = 1000  # hash intervals of votes and own hashes kept


class HashVoting:
    def __init__(
        self,
        state: ReplicaState,
        policy: RoundPolicy,
        client: RecordClient,
        *,
        peer_id: str,
        tag: str,
        hash_every: int,
        settle_seconds: float,
        stats: Counter,
        metrics: PeerMetrics,
    ):
        self.state, self.policy, self.client = state, policy, client
        self.peer_id, self.tag, self.hash_every, self.settle_seconds = peer_id, tag, hash_every, settle_seconds
        self.stats, self.metrics = stats, metrics
        self.pending: list[int] = []  # own hash rounds whose votes were not read yet
        self.rechecks: dict[
            int, tuple[float, int]
        ] = {}  # disputed hash round -> (read its votes again at, readings so far)
        self.expected_voters: dict[int, int] = {}  # hash round -> its contributors (who should vote on it)
        self.voters: dict[
            int, frozenset[str]
        ] = {}  # hash round -> keys whose votes count: contributors of its last windows
        self.windows: list[frozenset[str]] = []  # contributors of the last VOTER_WINDOWS hash intervals
        self.recent: set[str] = set()  # contributors since the last hash round
        self.digests: dict[int, str] = {}  # hash round -> this peer's set digest of it
        self.agreement: dict[int, dict] = {}  # hash round -> the outcome of its vote (the report's)
        self.lost: int | None = None  # a hash round where this peer lost the vote: the loop repairs it

    @property
    def round_seconds(self) -> float:
        return self.policy.clock.round_seconds

    def observe(self, rs: RoundSet) -> None:
        self.recent.update(rs.counts)

    def hash_round(self, rs: RoundSet, sha: str) -> None:
        """Round rs.round was applied live and hashed: remember who votes on it, and vote."""
        q = rs.round
        self.expected_voters[q] = len(rs.counts)
        self.windows = [*self.windows[-(VOTER_WINDOWS - 1) :], frozenset(self.recent)]
        self.voters[q], self.recent = frozenset().union(*self.windows), set()
        self.digests[q] = rs.digest
        for old in [k for k in self.state.hashes if k < q - KEEP_HASH_ROUNDS * self.hash_every]:
            self.state.hashes.pop(old)
            for d in (self.expected_voters, self.agreement, self.voters, self.digests):
                d.pop(old, None)
        try:
            rec = HashRecord(round=q, sha256=sha, set_digest=rs.digest, contributions=len(rs.contributions))
            self.client.publish_hash(self.policy.run_id, rec, self.policy.clock.close(q) + LOG_TTL)
        except DHTUnavailable as e:
            log.warning("[%s] round=%d hash publish failed: %s", self.tag, q, e)
        self.pending.append(q)

    def forget_after(self, round_: int) -> None:
        """The weights jumped to ``round_``: own votes on later rounds no longer stand for them."""
        self.pending = [k for k in self.pending if k <= round_]

    def votes(self, q: int, voters: frozenset[str] | None = None) -> dict[str, HashRecord]:
        """Hash records for round q: in a private run only its members'; with ``voters`` (checkpoint
        admission, PROTOCOL §14) only those keys', the others counted aside. A vote only makes a peer
        verify itself by recomputation (§14), so for that every key's counts."""
        out = {}
        for p, h in self.client.read_hashes(self.policy.run_id, q).items():
            if h.round != q or not self.policy.counts(p):
                continue
            if voters is not None and p not in voters and p != self.peer_id:
                self.stats["votes_ignored"] += 1
                continue
            out[p] = h
        return out

    def check_due(self, now: float) -> bool:
        """Read the votes of every hash round that is due (first reading or a dispute's next)."""
        due = [q for q in self.pending if now >= self.policy.clock.final_at(q) + self.round_seconds / 2]
        due_again = [q for q, (at, _) in self.rechecks.items() if now >= at]
        for q in due:
            self.pending.remove(q)
            self.check(q)
        for q in due_again:
            _, readings = self.rechecks.pop(q)
            self.check(q, readings=readings)
        return bool(due or due_again)

    def settle(self, stop: threading.Event) -> None:
        """Before leaving: read every pending vote, and decide disputes on what is there."""
        for q in list(self.pending):
            if not stop.is_set():
                stop.wait(max(0.0, self.policy.clock.final_at(q) + self.round_seconds / 2 - time.time()))
                self.check(q)
        while self.rechecks and not stop.is_set():
            q, (at, readings) = min(self.rechecks.items(), key=lambda kv: kv[1][0])
            del self.rechecks[q]
            stop.wait(max(0.0, at - time.time()))
            self.check(q, readings=readings)

    def check(self, q: int, readings: int = 0) -> None:
        """Compare with the others' hash records for q. A disagreement is decided only on a later
        reading of the votes, max(R, settle) after the last, and not before every contributor of
        round q has voted or HASH_READINGS readings were made: a vote stored late (a slow peer, a
        skewed clock) must neither send a peer that is right to repair towards an early minority
        nor keep one that is wrong from seeing that it lost."""
        mine_sha = self.state.hashes[q]
        try:
            votes = {p: h for p, h in self.votes(q).items() if p != self.peer_id}
            reported = {p: h.sha256 for p, h in votes.items()}
        except DHTUnavailable as e:
            log.warning("[%s] round=%d hash check skipped: %s", self.tag, q, e)
            return
        rep = compare_hashes(q, mine_sha, reported)
        readings += 1
        expected = self.expected_voters.get(q, 0)
        complete = len(reported) + 1 >= expected
        if rep.disagree and (readings == 1 or not complete) and readings < HASH_READINGS:
            wait = max(self.round_seconds, self.settle_seconds)
            self.rechecks[q] = (time.time() + wait, readings)
            log.warning(
                "[%s] round=%d weight hash disagrees with %d of %d peers (mine %s, majority %s; %d of %d "
                "contributors voted): "
                "reading the votes again in %.0fs",
                self.tag,
                q,
                rep.disagree,
                len(reported),
                mine_sha[:12],
                (rep.majority_sha256 or "tied")[:12],
                len(reported) + 1,
                expected,
                wait,
            )
            return
        self.agreement[q] = {"agree": rep.agree, "disagree": rep.disagree, "in_majority": rep.mine_in_majority}
        self.metrics.on_hash_check(not rep.disagree)
        if rep.mine_in_majority and rep.agree:
            self.state.verified.add((q, mine_sha))
        if not rep.disagree:
            self.stats["hash_agreements"] += 1
            if readings > 1:
                log.info("[%s] round=%d hash votes read again: all agree with this peer", self.tag, q)
            return
        self.stats["hash_mismatches"] += 1
        lost = not rep.mine_in_majority and rep.majority_sha256 is not None
        # diagnosis (§12): the same set digest means someone computed round q (or earlier rounds)
        # differently; another digest means other records were seen
        other = [h for h in votes.values() if h.sha256 != mine_sha]
        same_set = sum(1 for h in other if h.set_digest == self.digests.get(q))
        self.agreement[q]["diagnosis"] = {"same_set_digest": same_set, "other_set_digest": len(other) - same_set}
        log.log(
            logging.ERROR if lost else logging.WARNING,
            "[%s] round=%d weight hash disagrees with %d of %d peers (mine %s, majority %s; "
            "%d of them saw the same round set, %d another)%s",
            self.tag,
            q,
            rep.disagree,
            len(reported),
            mine_sha[:12],
            (rep.majority_sha256 or "tied")[:12],
            same_set,
            len(other) - same_set,
            ": verifying by recomputation" if lost else "",
        )
        if lost:
            self.lost = q

    def round_contributors(self, q: int) -> frozenset[str]:
        """Keys whose votes on round q count: this peer's own record if it applied q live, else
        round q's set decided now from the signed records the DHT holds for q (they live LOG_TTL)."""
        if q in self.voters:
            return self.voters[q]
        records = self.client.read_round(self.policy.run_id, q)
        # a fresh joiner has no seed log yet: in a capped round of a run that admits by seniority these are the
        # contributors as far as it can tell (docs/THREATS.md)
        return frozenset(self.policy.decide(q, records, self.state.seedlog.get, quiet=True).counts)

    def checkpoint_hash(self, q: int) -> str | None:
        """The hash a checkpoint of round q must have (§14): voted by more than half of round q's
        contributors (a contributor that has not voted counts against every hash, so votes that
        arrive before the others' cannot decide); None if there is no such hash."""
        contributors = self.round_contributors(q)
        counts = Counter(h.sha256 for p, h in self.votes(q, voters=contributors).items() if p != self.peer_id)
        if not counts:
            return None
        sha, n = counts.most_common(1)[0]
        return sha if 2 * n > len(contributors - {self.peer_id}) else None
