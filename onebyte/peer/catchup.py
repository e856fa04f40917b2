"""How a peer that is behind (or wrong) chooses its way back to the swarm's exact weights.

Two ways, from other peers over p2p (onebyte.p2p.transfer):
  log         replay every missed round from a peer's seed log: cost grows with the gap;
  checkpoint  download a peer's newest checkpoint, check its hash against the swarm's hash
              records, then replay only the rounds after it: cost is about flat in the gap.
The estimate below picks the cheaper, so catch-up time does not grow with the run's length.
A peer whose own state is wrong (repair) may not replay from it, only from a checkpoint.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm import tqdm

from onebyte.coordinator_free.agreement import RoundSet
from onebyte.coordinator_free.policy import RoundPolicy
from onebyte.coordinator_free.seedlog import SeedLogError, parse_line
from onebyte.dht.client import DHTUnavailable, RecordClient
from onebyte.dht.wire import clip
from onebyte.metrics.peer import PeerMetrics
from onebyte.p2p.transfer import Transfer, TransferError
from onebyte.peer.applier import RoundApplier
from onebyte.peer.checkpoint import CheckpointError, install_state
from onebyte.peer.report import RoundLog
from onebyte.peer.state import Base, ReplicaState
from onebyte.peer.voting import LOG_TTL, HashVoting

log = logging.getLogger("onebyte.peer")

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


def plans(
    applied: int,
    target: int,
    sources: list[Source],
    *,
    apply_seconds_per_contribution: float,
    bandwidth: float,
    state_valid: bool = True,
) -> list[Plan]:
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


# -- the catch-up itself --------------------------------------------------------------------------
LOG_FETCH_ROUNDS = 500  # rounds per seed-log request
CATCHUP_LAG = (
    4  # rounds behind the newest final round at which a peer fetches the log/checkpoint instead of reading the DHT
)
CATCHUP_RETRY_SECONDS = (
    30.0  # retry a failed catch-up every 2 s for this long, then read the missed rounds from the DHT meanwhile
)
# (bounded in time, not in tries: with stalling sources an attempt itself costs a deadline per source)
# catch-up sources (PROTOCOL §14, "Bounds"): fake heartbeats whose addresses stall must not make a joiner wait on each
MAX_PROBED = 64  # peers asked for .info per catch-up attempt
MAX_SOURCES = 8  # of those that answered, the ones whose plans are tried
MIN_SOURCES = 2  # peers the DHT does not vouch for are asked only when fewer than this many others answered
PROBE_SECONDS = 4.0  # dial + .info, per peer, all at once
PROBE_CONCURRENCY = 32
FAILED_BACKOFF = 120.0  # a peer that failed is asked last for this long


def genuine_entry(client: RecordClient, policy: RoundPolicy, line: bytes, held: dict | None = None) -> bool:
    """Every record of this seed-log entry is a signed, on-time record the DHT holds for its round
    (read and verified now, §9), with the same codes: nobody can put in a record its key did not
    sign. A source computes an entry's digest itself, so the digest proves nothing. Checkable while
    the round's records live (LOG_TTL); raises DHTUnavailable if the round cannot be read.
    ``held``: the round's records, already read (``RecordClient.read_rounds``)."""
    round_, _, records = parse_line(line)
    if not records:
        return True
    if held is None:
        held = client.read_round(policy.run_id, round_)
    close = policy.clock.close(round_)
    return all(
        p in held
        and held[p].codes == codes
        and held[p].round == round_
        and held[p].published_at <= close
        and policy.counts(p)
        for p, codes in records
    )


class CatchUp:
    """Reaches the swarm's newest final round from other peers' logs and checkpoints (PROTOCOL §14)."""

    def __init__(
        self,
        state: ReplicaState,
        applier: RoundApplier,
        voting: HashVoting,
        transfer: Transfer | None,
        client: RecordClient,
        *,
        peer_id: str,
        tag: str,
        hash_every: int,
        mode: str,
        progress: bool,
        stop: threading.Event,
        round_log: RoundLog,
        stats: Counter,
        metrics: PeerMetrics,
    ):
        self.state, self.applier, self.voting, self.transfer, self.client = state, applier, voting, transfer, client
        self.policy = applier.policy
        self.peer_id, self.tag, self.hash_every, self.mode, self.progress = peer_id, tag, hash_every, mode, progress
        self.stop, self.round_log, self.stats, self.metrics = stop, round_log, stats, metrics
        self.refused_offers: set[tuple[str, int, str]] = (
            set()
        )  # (peer, round, sha256) of offers refused: never fetched again
        self.bandwidth = DEFAULT_BANDWIDTH
        self.next_at = 0.0  # no attempt before this time
        self.failing_since: float | None = None

    def wanted(self, newest: int, now: float) -> bool:
        return newest - self.state.applied > CATCHUP_LAG and now >= self.next_at

    def attempt(self, newest: int, now: float) -> None:
        """One try from the loop. While peers exist but fail, retry every 2 s for a while; after
        that (or when nobody can help) read rounds from the DHT for CATCHUP_LAG rounds first."""
        if self.run(newest) == "failed":
            self.failing_since = self.failing_since or now
            if time.time() - self.failing_since < CATCHUP_RETRY_SECONDS:
                self.next_at = time.time() + 2.0
                self.stop.wait(2.0)
                return
        self.failing_since = None  # after this stretch of DHT reads, the next failure gets its own 30 s of retries
        # meanwhile read rounds from the DHT (counted from now: the attempt itself may have taken a while)
        self.next_at = time.time() + self.policy.clock.round_seconds * CATCHUP_LAG

    def sources(self, trusted: set[str] | None = None) -> tuple[list[Source], int]:
        """Peers that can serve a catch-up, and how many others we could not reach.

        Bounded against fake heartbeats (§14, "Sources"): first only peers that this peer's DHT
        routing table holds or that answered before are asked; the others (anyone can write a
        heartbeat with any address) only if fewer than MIN_SOURCES answered, those that failed
        within FAILED_BACKOFF seconds last, at most MAX_PROBED in all. Peers are asked at once
        (PROBE_CONCURRENCY at a time), each within PROBE_SECONDS, and the plans of at most
        MAX_SOURCES that answered are tried. Failures are summarised in one line."""
        if self.transfer is None:
            return [], 0
        try:
            beats = self.client.read_peers(self.policy.run_id)
        except DHTUnavailable as e:
            log.warning("[%s] round=%d no peer list: %s", self.tag, self.state.applied, e)
            return [], 1
        now = time.time()
        health = self.transfer.health
        known = self.client.routing_peers()
        cands = [
            (pid, hb)
            for pid, hb in beats.items()
            if pid != self.peer_id and hb.p2p_id and (trusted is None or pid in trusted)
        ]

        def rank(c):
            ok, failed, last_failed = health.get(c[1].p2p_id, (0, 0, 0.0))
            recent_failure = bool(failed) and now - last_failed < FAILED_BACKOFF
            vouched = c[1].p2p_id in known or ok > 0
            return (recent_failure, not vouched, -min(ok, 3), failed, random.random())

        cands.sort(key=rank)
        cands = cands[:MAX_PROBED]
        first = [c for c in cands if rank(c)[:2] == (False, False)]
        answers = self._probe(first)
        asked = list(first)
        if sum(isinstance(a, dict) for a in answers.values()) < MIN_SOURCES:
            rest = [c for c in cands if c not in first]
            answers |= self._probe(rest)
            asked += rest
        out, failures = [], []
        for pid, hb in asked:
            info = answers.get(hb.p2p_id)
            if isinstance(info, dict):
                span = tuple(info["log"]) if info["log"] else None
                out.append(Source(pid, hb.p2p_id, span, info["contributions"], info["checkpoint"]))
            else:
                failures.append((pid, info))
        unasked = len(beats) - len(asked) - (self.peer_id in beats)
        if failures:
            self.stats["sources_failed"] += len(failures)
            examples = "; ".join(f"{p[:8]}: {clip(why, 80)}" for p, why in failures[:3])
            log.info(
                "[%s] round=%d %d of %d peer(s) asked cannot serve catch-up (%d not asked) (e.g. %s)",
                self.tag,
                self.state.applied,
                len(failures),
                len(asked),
                unasked,
                examples,
            )
        fresh = [
            s for s in out if not rank((s.peer_id, beats[s.peer_id]))[0]
        ]  # sources that failed lately go only when no other answered
        return (fresh or out)[:MAX_SOURCES], len(failures)

    def _probe(self, cands) -> dict:
        return self.transfer.probe(
            [(hb.p2p_id, list(hb.p2p_addrs)) for _, hb in cands], deadline=PROBE_SECONDS, concurrency=PROBE_CONCURRENCY
        )

    def admit(self, src: Source, target: int) -> None:
        """Refuse, before any byte is fetched, a checkpoint this peer cannot check (§14): of a round
        that is not a hash round, not yet final or past the target, or whose hash is not the strict
        majority of that round's contributors' votes. A refused offer is never considered again."""
        ck = src.checkpoint
        q, sha = int(ck["round"]), str(ck["sha256"])
        offer = (src.peer_id, q, sha)
        if offer in self.refused_offers:
            raise CheckpointError(f"checkpoint of round {q} from {src.peer_id[:8]} was refused before")
        newest = self.policy.clock.last_final(time.time())
        agreed = None
        if q % self.hash_every:
            reason = f"round {q} is not a hash round"
        elif q > newest:
            reason = f"round {q} is not final yet (newest final round {newest})"
        elif q > target:
            reason = f"round {q} is past the round this peer is catching up to ({target})"
        else:
            agreed = self.voting.checkpoint_hash(q)
            reason = (
                None
                if agreed == sha
                else (
                    f"its hash {sha[:12]} is not voted by more than half of round {q}'s contributors "
                    f"(such a hash: {(agreed or 'none')[:12]})"
                )
            )
        if reason:
            if not (q <= newest and not q % self.hash_every and agreed is None):
                self.refused_offers.add(offer)  # not while the votes may still come in: then it is asked again
            self.stats["checkpoints_refused"] += 1
            raise CheckpointError(f"checkpoint from {src.peer_id[:8]} refused: {reason}")

    def run(self, target: int, *, trusted: set[str] | None = None, state_valid: bool = True) -> str:
        """Reach ``target`` through the cheapest plan other peers offer: "done", "nobody" (no peer
        can help) or "failed" (some could, or could not be reached, and none succeeded)."""
        t0 = time.time()
        start = self.state.applied
        sources, unreachable = self.sources(trusted)
        options = plans(
            start,
            target,
            sources,
            apply_seconds_per_contribution=self.applier.seconds_per_contribution,
            bandwidth=self.bandwidth,
            state_valid=state_valid,
        )
        if self.mode != "auto":
            options = [p for p in options if p.method == self.mode]
        elif start >= 0:  # a peer with a state of its own replays onto it; only a fresh joiner takes a checkpoint (§14)
            options = [p for p in options if p.method == "log"]
        for plan in options:
            try:
                if plan.method == "checkpoint":
                    self.install(plan.source, target)
                    self.fetch_seniority_window(plan.source)
                self.replay_log(plan.source, target)
            except (TransferError, CheckpointError, SeedLogError, DHTUnavailable) as e:
                log.warning(
                    "[%s] round=%d catch-up by %s from %s failed: %s",
                    self.tag,
                    self.state.applied,
                    plan.method,
                    plan.source.peer_id[:8],
                    e,
                )
                if plan.method == "checkpoint" and self.state.applied != start:
                    break  # the checkpoint is in: the normal loop reads the rest from the DHT
                continue
            break
        else:
            outcome = "failed" if options or unreachable else "nobody"
            log.info(
                "[%s] round=%d no catch-up to round %d: %s",
                self.tag,
                self.state.applied,
                target,
                "no peer offers one"
                if outcome == "nobody"
                else f"{len(options)} plan(s) failed, {unreachable} peer(s) unreachable",
            )
            return outcome
        seconds = time.time() - t0
        self.stats[f"catchups_{plan.method}"] += 1
        self.metrics.on_catchup(plan.method, seconds)
        log.info(
            "[%s] round=%d caught up from round %d by %s from %s in %.2fs (estimated %.2fs)",
            self.tag,
            self.state.applied,
            start,
            plan.method,
            plan.source.peer_id[:8],
            seconds,
            plan.seconds,
        )
        self.round_log.write(
            {
                "event": "catchup",
                "time": time.time(),
                "method": plan.method,
                "from_round": start,
                "round": self.state.applied,
                "seconds": seconds,
            }
        )
        return "done"

    def install(self, src: Source, target: int) -> None:
        """Fetch an admitted checkpoint, check it is the one offered, and install it whole."""
        self.admit(src, target)
        t0 = time.time()
        size = src.checkpoint["bytes"]
        meta, tensors = self.transfer.fetch_state(src.p2p_id, timeout=max(60.0, 4 * size / self.bandwidth))
        self.bandwidth = max(1e5, size / max(1e-3, time.time() - t0))
        q, sha = int(meta["round"]), str(meta["sha256"])
        if (q, sha) != (int(src.checkpoint["round"]), str(src.checkpoint["sha256"])):
            self.refused_offers.add((src.peer_id, int(src.checkpoint["round"]), str(src.checkpoint["sha256"])))
            self.stats["checkpoints_refused"] += 1
            raise CheckpointError(
                f"peer {src.peer_id[:8]} sent round {q} hash {sha[:12]}, not the checkpoint it offered"
            )
        install_state(tensors, self.state.replica.state_tensors(), sha, f"round {q} from peer {src.peer_id[:8]}")
        self.state.anchor = Base(q, sha, self.state.snapshot())
        self.state.jumped_to(q, sha)
        self.voting.forget_after(q)
        log.info(
            "[%s] round=%d installed checkpoint from %s (%.1f MB in %.2fs, hash %s agreed)",
            self.tag,
            q,
            src.peer_id[:8],
            size / 1e6,
            time.time() - t0,
            sha[:12],
        )

    def fetch_seniority_window(self, src: Source) -> None:
        """After a checkpoint of round c, in a run that admits by seniority (§15): the entries of the W
        rounds up to c, which the coming rounds' seniority is read from. Checked like replayed ones,
        but not applied; without them a capped round may be decided otherwise than by the others,
        which a hash disagreement repairs (§14), so a failure here is a warning."""
        if self.policy.seniority is None:
            return
        c = self.state.applied
        first = max(0, c - self.policy.seniority.window + 1)
        try:
            for line, rs in self._checked_entries(src, first, c):
                if not first <= rs.round <= c:
                    raise SeedLogError(f"log from {src.peer_id[:8]} sent round {rs.round}, not one of {first}..{c}")
                self.state.seedlog.put_line(line)
        except (TransferError, SeedLogError, DHTUnavailable) as e:
            log.warning("[%s] round=%d seniority window from %s not taken: %s", self.tag, c, src.peer_id[:8], e)

    def _checked_entries(self, src: Source, first: int, last: int) -> Iterator[tuple[bytes, RoundSet]]:
        """The source's seed-log entries for rounds first..last, each yielded once checked: replayed
        (its digest reproduced) and, for a round whose records still live in the DHT (LOG_TTL after
        it closed), holding only records the DHT holds (``genuine_entry``, §14). Raises at the first
        that is not, after the entries before it were yielded (and used)."""
        lines = self.transfer.fetch_log(src.p2p_id, first, last)
        if not lines:
            raise TransferError(f"peer {src.peer_id[:8]} sent no log for round {first}")
        held = self._held_records(lines)  # the batch's recent rounds, read from the DHT at once
        for line in lines:
            rs = self.policy.replay(line)
            if rs.round in held and not genuine_entry(self.client, self.policy, line, held[rs.round]):
                self.stats["log_entries_refused"] += 1
                raise SeedLogError(
                    f"log from {src.peer_id[:8]}: its entry for round {rs.round} holds records the DHT does not"
                )
            yield line, rs

    def _held_records(self, lines: list[bytes]) -> dict[int, dict]:
        """The DHT's records of the entries' rounds that still live there (LOG_TTL) and have records."""
        now = time.time()
        rounds = []
        for line in lines:
            r, _, records = parse_line(line)
            if records and now < self.policy.clock.close(r) + LOG_TTL:
                rounds.append(r)
        return self.client.read_rounds(self.policy.run_id, rounds) if rounds else {}

    def replay_log(self, src: Source, target: int) -> None:
        """Apply the source's seed-log entries up to ``target`` (what its log covers); an entry that
        fails its checks (``_checked_entries``) ends this source's plan."""
        st = self.state
        last = min(target, src.log[1]) if src.log else st.applied
        with tqdm(
            total=max(0, last - st.applied),
            desc=f"catch-up {self.tag}",
            unit="round",
            disable=not self.progress,
            leave=False,
        ) as bar:
            while st.applied < last and not self.stop.is_set():
                for _, rs in self._checked_entries(src, st.applied + 1, min(last, st.applied + LOG_FETCH_ROUNDS)):
                    if rs.round != st.applied + 1:
                        raise SeedLogError(f"log from {src.peer_id[:8]} jumps from round {st.applied} to {rs.round}")
                    self.applier.apply(rs, live=False)
                    bar.update(1)
