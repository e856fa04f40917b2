"""A swarm peer: the step loop of onebyte when many peers train one model over the DHT.

One loop, driven by the wall-clock rounds of the run manifest:
  apply   every round that became final, in order: read its records, decide the set, apply it;
          every ``hash_every`` rounds publish the weight hash, and later compare with the others';
  make    contributions for the current round on this peer's data while there is time;
  publish them as one signed record (at most ``contribs_per_round`` bytes) before the deadline;
  beat    a heartbeat every minute so others can see who is alive, where, and how to reach it;
and, around it (onebyte/peer/recovery.py): resume from the checkpoint directory, catch up from
other peers' logs or checkpoints when far behind, repair after losing a hash vote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from onebyte import __version__
from onebyte.coordinator_free.agreement import RoundSet, compare_hashes, decide_round
from onebyte.zo.codec import encode_codes
from onebyte.coordinator_free.influence import InfluenceMonitor
from onebyte.coordinator_free.manifest import RunManifest, parse_manifest, pick_manifest, refusal, tied_names
from onebyte.coordinator_free.rounds import RoundClock
from onebyte.coordinator_free.seedlog import SeedLog
from onebyte.dht.client import DHTUnavailable, RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import ContributionRecord, HashRecord, Heartbeat, RunAnnouncement
from onebyte.p2p.transfer import Transfer
from onebyte.metrics.peer import PeerMetrics
from onebyte.peer import catchup
from onebyte.peer.recovery import RecoveryMixin
from onebyte.peer.train import TrainConfig, batch_indices, build, write_json_atomic
from onebyte.settings import SwarmConfig, agreed_fields, default_manifest_fields, train_fields
from onebyte.tasks.models import warm_imports
from onebyte.zo import contribution_seed
from onebyte.zo.directions import Directions

log = logging.getLogger("onebyte.peer")

LOG_TTL = 6 * 3600.0  # contribution records stay readable this long for late joiners
# Every DHT operation costs kilobytes on the wire (several RPCs, each a new libp2p stream), so what
# is not per-round data goes out on a slower clock: liveness every BEAT_SECONDS, the run's entry
# in the public run list every ANNOUNCE_SECONDS, hashes about every HASH_SECONDS (see BENCHMARKS.md,
# bytes on the wire).
BEAT_SECONDS = 60.0
ANNOUNCE_SECONDS = 300.0
HASH_SECONDS = 60.0
HASH_READINGS = 4  # most readings of a disputed hash round's votes before deciding on what is there
VOTER_WINDOWS = 16  # a key votes on hash round q if it contributed to a round in (q - VOTER_WINDOWS * hash_every, q]
CATCHUP_LAG = 4  # rounds behind the newest final round at which a peer fetches the log/checkpoint instead of reading the DHT
CATCHUP_RETRY_SECONDS = 30.0  # retry a failed catch-up every 2 s for this long, then read the missed rounds from the DHT meanwhile
# (bounded in time, not in tries: with stalling sources an attempt itself costs a deadline per source)


class ManifestConflict(ValueError):
    pass


class SwarmPeer(RecoveryMixin):
    def __init__(self, cfg: SwarmConfig):
        self.cfg = cfg
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self.identity = Identity.load_or_create(cfg.identity_path)
        self.peer_id = self.identity.peer_id
        self.tag = self.peer_id[:8]
        self.stop = threading.Event()
        self.dht = start_dht(self.identity, cfg.initial_peers, host_maddrs=cfg.host_maddrs, announce_maddrs=cfg.announce_maddrs, num_replicas=cfg.num_replicas, **cfg.dht_options)
        self.client = RecordClient(self.dht, self.identity)
        self.stats = Counter()
        self.hashes: dict[int, str] = {}
        self.agreement: dict[int, dict] = {}
        self.applied = -1
        self.codes: dict[int, list] = {}
        self.published: set[int] = set()
        self.contrib_seconds = 0.0  # running estimate of one contribution's duration
        self.reprobed = -1  # last round in which a too-slow estimate was relaxed
        self.pending_checks: list[int] = []
        self.repair_round: int | None = None  # a hash round where this peer lost the vote
        self.rechecks: dict[int, tuple[float, int]] = {}  # disputed hash round -> (read its votes again at, readings so far)
        self.expected_voters: dict[int, int] = {}
        self.voters: dict[int, frozenset[str]] = {}  # hash round -> keys whose hash votes count: contributors of its last VOTER_WINDOWS hash intervals
        self.recent_contributors: set[str] = set()
        self.contributor_windows: list[frozenset[str]] = []  # contributors of the last VOTER_WINDOWS hash intervals
        self.digests: dict[int, str] = {}  # hash round -> this peer's set digest of it
        self.verified: set[tuple[int, str]] = set()  # (round, sha256) of own states another voter or a recomputation confirmed
        self.anchor = None  # (round, sha256, tensors or path): a state this peer accepted whole (an installed checkpoint), a base to recompute from
        self.refused_offers: set[tuple[str, int, str]] = set()  # (peer, round, sha256) of checkpoint offers refused: never fetched again
        self._initial = None  # the initial weights while a repair needs them
        self.checkpoint: tuple[Path, int, str] | None = None  # newest own checkpoint (path, round, sha256)
        self.last_checkpoint_at = 0.0
        self.next_catchup_at = 0.0
        self.next_read_at = 0.0  # after a round could not be read from the DHT: when to try again
        self.next_announce = 0.0  # the public run list is refreshed every ANNOUNCE_SECONDS, from the first heartbeat on
        self.catchup_failing_since: float | None = None
        self.bandwidth = catchup.DEFAULT_BANDWIDTH
        self.transfer: Transfer | None = None
        self.suspects: dict[str, dict] = {}
        self.curve: list[dict] = []  # --eval-every: held-out scores on a fixed subset as the run goes
        self.metrics = PeerMetrics()
        if cfg.metrics_port is not None:
            self.metrics.serve(cfg.metrics_port)

    # -- joining ---------------------------------------------------------------------------------
    def _read_manifest(self) -> tuple[str, RunManifest] | None:
        """The run's manifest from the DHT: the earliest one, or only the named creator's."""
        def parse(v):
            return parse_manifest(v)  # a protocol this peer does not speak is kept aside, to refuse it clearly

        found = self.client.read_manifests(self.cfg.run_id, parse)
        if self.cfg.run_creator:
            found = {k: m for k, m in found.items() if k == self.cfg.run_creator}
        picked = pick_manifest(found, self.cfg.run_id)
        if picked is None and refusal(self.cfg.run_id, found):
            raise ManifestConflict(refusal(self.cfg.run_id, found))
        if picked is not None and len({m.model_dump_json() for m in found.values() if isinstance(m, RunManifest) and m.run_id == self.cfg.run_id}) > 1:
            log.warning("[%s] round=-1 %d different manifests claim run %s; taking the earliest, by %s (pin one with --run-creator KEY)",
                        self.tag, len(found), self.cfg.run_id, picked[0][:16])
        return picked

    def _pinned_path(self) -> Path | None:
        return Path(self.cfg.checkpoint_dir) / self.cfg.run_id / "manifest.json" if self.cfg.checkpoint_dir else None

    def _read_pinned(self) -> tuple[str, RunManifest] | None:
        """The manifest this peer joined with before (its checkpoint directory): a restart keeps it,
        whatever was published under the run id since."""
        path = self._pinned_path()
        if path is None or not path.exists():
            return None
        try:
            pinned = json.loads(path.read_text())
            creator, manifest = str(pinned["creator"]), RunManifest(**pinned["manifest"])
            if manifest.run_id != self.cfg.run_id:
                raise ValueError(f"it is for run {manifest.run_id!r}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = path.with_name(path.name + ".refused")
            path.replace(aside)
            log.warning("[%s] round=-1 pinned manifest %s unreadable (moved to %s): %s", self.tag, path, aside.name, e)
            return None
        if self.cfg.run_creator and creator != self.cfg.run_creator:
            raise ManifestConflict(f"{path} pins run {self.cfg.run_id!r} to creator {creator[:16]}, not --run-creator {self.cfg.run_creator[:16]}; "
                                   "use another --checkpoint-dir for another run")
        return creator, manifest

    def _pin(self, creator: str, manifest: RunManifest) -> None:
        path = self._pinned_path()
        if path is not None:
            write_json_atomic(path, {"creator": creator, "manifest": manifest.model_dump()})

    def join(self) -> RunManifest:
        """Find the run's manifest (or create it with --new-run) and load model and data to match."""
        cfg = self.cfg
        found = self._read_pinned() or self._read_manifest()
        if found is None and cfg.new_run:
            found = self.peer_id, self._create_manifest()
        deadline = time.time() + cfg.join_timeout
        if found is None:
            log.info("[%s] round=-1 waiting up to %.0fs for run %s's manifest", self.tag, cfg.join_timeout, cfg.run_id)
            warm_imports()  # meanwhile: then building the model once the manifest appears takes seconds
        while found is None:
            if time.time() > deadline:
                by = f" created by {cfg.run_creator[:16]}" if cfg.run_creator else ""
                raise ManifestConflict(f"no run {cfg.run_id!r}{by} is visible from {cfg.initial_peers or 'this DHT'} after {cfg.join_timeout:.0f}s; "
                                       "start it with --new-run or check --initial-peers")
            time.sleep(1.0)
            found = self._read_manifest()
        creator, manifest = found
        self.run_creator = creator
        conflicts = manifest.conflicts(cfg.local)
        if conflicts:
            raise ManifestConflict(f"run {cfg.run_id!r} uses other settings than you passed: " + "; ".join(conflicts)
                                   + " (omit them to take the run's settings)")
        self.manifest = manifest
        self.client.lean_replicas = manifest.lean_replicas
        self.allowed = frozenset(manifest.allowed_peers) if manifest.allowed_peers is not None else None
        if self.allowed is not None and self.peer_id not in self.allowed:
            log.warning("[%s] round=-1 run %s is private and this peer's key is not on its list: it will follow the run but its contributions will not count",
                        self.tag, manifest.run_id)
        if not hasattr(self, "built"):
            self.built = build(self._train_config(manifest.model_dump()))
        self.loaded, self.task, self.replica = self.built
        initial = self.replica.sha256()
        if initial != manifest.initial_sha256:
            raise ManifestConflict(f"your copy of {manifest.model!r} has initial weights {initial[:12]}, the run started from "
                                   f"{manifest.initial_sha256[:12]}: a different model version or dtype")
        ties = self._ties(self.replica)
        if manifest.ties is not None and manifest.ties != ties:
            raise ManifestConflict(f"your copy of {manifest.model!r} ties tensors as {ties}, the run's creator had {manifest.ties}: "
                                   "another model version")
        self.clock = RoundClock(manifest.start_time, manifest.round_seconds, manifest.publish_margin, manifest.settle_seconds)
        pool = [i for i in range(self.task.num_train) if i % cfg.shard[1] == cfg.shard[0]]
        if not pool:
            raise ValueError(f"shard {cfg.shard[0]}/{cfg.shard[1]} of {self.task.num_train} training examples is empty")
        if cfg.max_examples and len(pool) > cfg.max_examples:  # a hash-chosen part of the shard, not its (possibly sorted) head
            pool = sorted(sorted(pool, key=lambda i: hashlib.sha256(f"{cfg.seed}:{i}".encode()).digest())[: cfg.max_examples])
        self.pool = pool
        self.metrics.on_start(version=__version__, protocol_version=manifest.protocol_version, model=manifest.model, run_id=manifest.run_id,
                              peer_id=self.peer_id, dataset=manifest.dataset)
        self.ckdir = Path(cfg.checkpoint_dir) / manifest.run_id if cfg.checkpoint_dir else None
        self._pin(creator, manifest)
        self.seedlog = SeedLog(self.ckdir / "seedlog.jsonl" if self.ckdir else None)
        self.influence = InfluenceMonitor(self.replica.codec)
        self._apply_s_per_contribution = self._estimate_apply_cost()
        if self.ckdir:
            self._resume()
        self.transfer = self._start_transfer(manifest.run_id)
        # round r-1 becomes final `settle` after round r opens: that much lag is normal, not falling behind
        self.lag_allowed = cfg.max_lag + math.ceil(manifest.settle_seconds / manifest.round_seconds)
        log.info("[%s] round=%d joined run %s of creator %s (model %s, %d trainable, lr %g, eps %g, %d contributions/round, %.0fs rounds, shard %d/%d of %d examples)",
                 self.tag, self.clock.round_at(time.time()), manifest.run_id, creator, manifest.model, self.replica.num_trainable, manifest.lr,
                 manifest.eps, manifest.contribs_per_round, manifest.round_seconds, cfg.shard[0], cfg.shard[1], len(pool))
        return manifest

    def _train_config(self, settings: dict) -> TrainConfig:
        """The model/data/update settings of a run (a manifest's or a creator's) plus this peer's own."""
        return TrainConfig(**train_fields(settings), device=self.cfg.device, seed=self.cfg.seed, progress=False)

    @staticmethod
    def _ties(replica) -> dict[str, list[str]]:
        """The names each trainable tensor also goes by (the manifest's ``ties``, PROTOCOL §1)."""
        return tied_names(replica.model.named_parameters(remove_duplicate=False), [n for n, _ in replica.params])

    def _create_manifest(self) -> RunManifest:
        settings = default_manifest_fields() | {k: v for k, v in self.cfg.local.items() if v is not None}
        self.built = build(self._train_config(settings))
        if self.cfg.evaluate:  # before the clock starts, so the creator does not begin the run behind
            self.before = self._evaluate(self.built[1], self.built[2])
        now = time.time()
        r = float(settings["round_seconds"])
        manifest = RunManifest(
            run_id=self.cfg.run_id, created_at=now, start_time=now + self.cfg.start_delay, round_seconds=r,
            publish_margin=min(max(0.15 * r, 1.0), 0.5 * r), settle_seconds=max(0.2 * r, 3.0),
            hash_every=int(settings.get("hash_every") or max(1, math.ceil(HASH_SECONDS / r))),
            protocol_version=Directions.parse(settings["directions"]).protocol_version,
            initial_sha256=self.built[2].sha256(), task_description=self.built[1].describe(), ties=self._ties(self.built[2]),
            **agreed_fields(settings, but=("round_seconds", "hash_every")),
        )
        if not self.client.publish_manifest(self.cfg.run_id, manifest.record(), now + 30 * 24 * 3600):
            raise DHTUnavailable("could not store the run manifest in the DHT")
        log.info("[%s] round=-1 created run %s starting in %.0fs", self.tag, manifest.run_id, self.cfg.start_delay)
        return manifest

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, m = self.cfg, self.join()
        before = getattr(self, "before", None) or (self._evaluate() if cfg.evaluate else None)
        if cfg.follow_only:
            last_round = self.clock.last_final(time.time())
        else:
            self._warm_up()
            last_round = (cfg.rounds - 1) if cfg.rounds else math.inf
        next_beat = 0.0
        started = time.time()
        while not self.stop.is_set():
            now = time.time()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + BEAT_SECONDS
            if self.repair_round is not None:
                self._repair()
                continue
            newest = min(self.clock.last_final(now), last_round)
            if newest - self.applied > CATCHUP_LAG and now >= self.next_catchup_at:
                outcome = self._catch_up(newest)
                if outcome == "failed":  # peers exist but did not answer: retry for a while before replaying the DHT
                    self.catchup_failing_since = self.catchup_failing_since or now
                    if time.time() - self.catchup_failing_since < CATCHUP_RETRY_SECONDS:
                        self.next_catchup_at = time.time() + 2.0
                        self.stop.wait(2.0)
                        continue
                self.catchup_failing_since = None  # after this stretch of DHT reads, the next failure gets its own 30 s of retries
                # meanwhile read rounds from the DHT (counted from now: the attempt itself may have taken a while)
                self.next_catchup_at = time.time() + m.round_seconds * CATCHUP_LAG
                continue
            if self.applied < newest and now >= self.next_read_at:
                self._apply(self.applied + 1)
                continue
            due = [q for q in self.pending_checks if now >= self.clock.final_at(q) + m.round_seconds / 2]
            due_again = [q for q, (at, _) in self.rechecks.items() if now >= at]
            if due or due_again:
                for q in due:
                    self.pending_checks.remove(q)
                    self._check_hashes(q)
                for q in due_again:
                    _, readings = self.rechecks.pop(q)
                    self._check_hashes(q, readings=readings)
                continue
            if self.applied >= last_round:
                break
            if not cfg.follow_only and self._contribute_or_publish(now, last_round):
                continue
            r_now = self.clock.round_at(now)
            wake = min(max(self.clock.final_at(self.applied + 1), self.next_read_at), next_beat, self.clock.open_at(r_now + 1))
            if self.codes.get(r_now) and r_now not in self.published:
                wake = min(wake, self.clock.publish_by(r_now))  # a partly filled round goes out on time
            self.stop.wait(max(0.01, min(wake - time.time(), 1.0)))
        for q in list(self.pending_checks):
            if not self.stop.is_set():
                self.stop.wait(max(0.0, self.clock.final_at(q) + m.round_seconds / 2 - time.time()))
                self._check_hashes(q)
        while self.rechecks and not self.stop.is_set():  # disputes are decided before leaving, not repaired
            q, (at, readings) = min(self.rechecks.items(), key=lambda kv: kv[1][0])
            del self.rechecks[q]
            self.stop.wait(max(0.0, at - time.time()))
            self._check_hashes(q, readings=readings)
        after = self._evaluate() if cfg.evaluate and not self.stop.is_set() else None
        return self._finish(before, after, time.time() - started)

    def _warm_up(self) -> None:
        """One unpublished estimate: pays one-time costs and measures how long a contribution takes."""
        batch = self.replica.to_device(self.task.train_batch(self.pool[: self.cfg.batch_size]))
        t0 = time.perf_counter()
        self.replica.estimate_on(0, batch, self.task.loss)
        self.contrib_seconds = time.perf_counter() - t0

    def _contribute_or_publish(self, now: float, last_round: float) -> bool:
        """Make one contribution for the current round, or publish it; False if there is nothing to do."""
        m = self.manifest
        r = self.clock.round_at(now)
        for q in sorted(self.codes):
            if q not in self.published and (q < r or len(self.codes[q]) >= m.contribs_per_round or now >= self.clock.publish_by(q)):
                self._publish(q)
                return True
        if r < 0 or r > last_round or self.applied < r - self.lag_allowed:
            return False
        codes = self.codes.setdefault(r, [])
        if r in self.published or len(codes) >= m.contribs_per_round:
            if r in self.published:
                self.codes.pop(r, None)
            return False
        if now + self.contrib_seconds > self.clock.publish_by(r):
            if not codes and self.reprobed != r:  # re-probe once a round: estimates taken under load go stale
                self.reprobed = r
                self.contrib_seconds *= 0.7
            return False  # this contribution would miss the deadline
        t0 = time.perf_counter()
        # the next k indices of this round, each on its own batch; with k > 1 and low-rank directions
        # all 2k evaluations share one forward (population batching), otherwise they run one by one
        k = max(1, min(self.cfg.population, m.contribs_per_round - len(codes)))
        seeds = [contribution_seed(m.run_id, self.peer_id, r, len(codes) + j) for j in range(k)]
        batches = []
        for _ in range(k):
            attempt = self.stats["attempts"]  # a retry after a non-finite loss draws another batch
            self.stats["attempts"] += 1
            idx = batch_indices(self.cfg.seed, self.peer_id, r, attempt, len(self.pool), self.cfg.batch_size)
            batches.append(self.replica.to_device(self.task.train_batch([self.pool[i] for i in idx])))
        estimates = self.replica.estimate_many(seeds, batches, self.task.loss)  # one by one where the run is dense
        spent = time.perf_counter() - t0
        self.contrib_seconds = 0.7 * self.contrib_seconds + 0.3 * spent if self.contrib_seconds else spent
        if time.time() > self.clock.publish_by(r) or r in self.published:
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

    def _publish(self, r: int) -> None:
        self.published.add(r)
        self.published -= {q for q in self.published if q < r - 8}  # keep the bookkeeping bounded
        codes = self.codes.pop(r, None) or []
        if not codes:
            return
        if time.time() > self.clock.publish_by(r) + self.manifest.publish_margin / 2:
            self.stats["missed_deadline"] += len(codes)
            log.warning("[%s] round=%d %d contribution(s) not published: past the deadline", self.tag, r, len(codes))
            return
        rec = ContributionRecord(round=r, published_at=time.time(), codes=encode_codes(codes, self.replica.codec))
        try:
            ok = self.client.publish_contributions(self.manifest.run_id, rec, self.clock.close(r) + LOG_TTL)
        except DHTUnavailable as e:
            ok = False
            log.warning("[%s] round=%d publish failed: %s", self.tag, r, e)
        self.stats["published" if ok else "publish_failed"] += len(codes)
        if ok:
            self.metrics.on_published(len(codes), len(rec.codes))

    def _apply(self, q: int) -> None:
        """Read round q's records from the DHT, decide its set and apply it."""
        m = self.manifest
        for attempt in range(5):
            try:
                records = self.client.read_round(m.run_id, q)
                break
            except DHTUnavailable as e:
                if not self.dht.is_alive():
                    raise
                log.warning("[%s] round=%d read failed (%s), retrying", self.tag, q, e)
                self.stop.wait(1.0 + attempt)
        else:  # the DHT runs but this key cannot be read: try again later; far behind, catch-up from peers takes over
            self.stats["round_read_failed"] += 1
            self.next_read_at = time.time() + m.round_seconds
            log.error("[%s] round=%d could not be read from the DHT in 5 tries; trying again in %.0fs", self.tag, q, m.round_seconds)
            return
        rs = decide_round(m.run_id, q, records, close_time=self.clock.close(q), contribs_per_round=m.contribs_per_round, codec=self.replica.codec,
                          allowed=self.allowed, rule=m.rule)
        for reason, n in rs.rejected.items():
            self.stats[f"rejected_{reason}"] += n
            self.metrics.on_rejected(reason, n)
        self.metrics.on_received(sum(len(rec.codes) for p, rec in records.items() if p != self.peer_id))
        self.metrics.sync_rejections(self.client)
        self._apply_set(rs)

    def _apply_set(self, rs: RoundSet, *, replayed: bool = False) -> None:
        """Apply a decided round, log it, and at hash rounds publish the hash (live rounds only)."""
        m, q = self.manifest, rs.round
        assert q == self.applied + 1, (q, self.applied)
        t0 = time.perf_counter()
        self.replica.apply(rs.contributions)
        apply_s = time.perf_counter() - t0
        if rs.contributions:
            self._apply_s_per_contribution = 0.8 * self._apply_s_per_contribution + 0.2 * apply_s / len(rs.contributions)
        self.applied = q
        self.seedlog.put(q, rs.digest, rs.records)
        self.influence.observe(rs)
        self.recent_contributors.update(rs.counts)
        mine = rs.counts.get(self.peer_id, 0)
        self.stats["applied_local"] += mine
        self.stats["applied_remote"] += len(rs.contributions) - mine
        self.stats["rounds_applied"] += 1
        self.metrics.on_applied(q, mine, len(rs.contributions) - mine, apply_s, None if replayed else time.time() - self.clock.close(q))
        if replayed:
            return
        sha = None
        if q % m.hash_every == 0 or (self.cfg.rounds and q == self.cfg.rounds - 1):
            sha = self.hashes[q] = self.replica.sha256()
            self.expected_voters[q] = len(rs.counts)  # the round's contributors: who should vote on it
            self.contributor_windows = [*self.contributor_windows[-(VOTER_WINDOWS - 1):], frozenset(self.recent_contributors)]
            self.voters[q], self.recent_contributors = frozenset().union(*self.contributor_windows), set()
            self.digests[q] = rs.digest
            for old_q in [k for k in self.hashes if k < q - 1000 * m.hash_every]:
                self.hashes.pop(old_q)
                self.expected_voters.pop(old_q, None)
                self.agreement.pop(old_q, None)
                self.voters.pop(old_q, None)
                self.digests.pop(old_q, None)
            try:
                self.client.publish_hash(m.run_id, HashRecord(round=q, sha256=sha, set_digest=rs.digest, contributions=len(rs.contributions)),
                                         self.clock.close(q) + LOG_TTL)
            except DHTUnavailable as e:
                log.warning("[%s] round=%d hash publish failed: %s", self.tag, q, e)
            self.pending_checks.append(q)
            self._maybe_checkpoint(q, sha)
            self._watch_influence(q)
        log.info("[%s] round=%d applied %d contributions from %d peers in %.2fs%s", self.tag, q, len(rs.contributions), len(rs.counts),
                 apply_s, f" hash={sha[:12]}" if sha else "")
        self._round_log({"event": "applied", "round": q, "time": time.time(), "contributions": len(rs.contributions),
                         "peers": len(rs.counts), "local": mine, "sha256": sha, "loss": getattr(self, "last_loss", None),
                         "apply_seconds": apply_s, "latency_seconds": time.time() - self.clock.close(q)})
        if self.cfg.eval_every and (q + 1) % self.cfg.eval_every == 0 and not self.stop.is_set():
            ev = self._evaluate(limit=self.cfg.eval_every_size)
            self.curve.append({"round": q, **ev})
            self._round_log({"event": "eval", "round": q, "time": time.time(), "subset": True, **ev})

    def _watch_influence(self, q: int) -> None:
        suspects = self.influence.suspects()
        self.metrics.on_suspects(len(suspects))
        for s in suspects:
            if s.peer_id not in self.suspects:
                log.warning("[%s] round=%d peer %s pushes far harder than the swarm (%s: %.0f%% saturated codes, median |g| %.3g vs %.3g); "
                            "its influence stays within the codec's bound", self.tag, q, s.peer_id[:8], s.reason, 100 * s.saturated_share,
                            s.median_magnitude, s.swarm_median_magnitude)
            self.suspects[s.peer_id] = {"reason": s.reason, "saturated_share": s.saturated_share, "median_magnitude": s.median_magnitude,
                                        "swarm_median_magnitude": s.swarm_median_magnitude, "round": q}

    def _hash_votes(self, q: int, voters: frozenset[str] | None = None) -> dict:
        """Hash records for round q: in a private run only its members'; with ``voters`` (checkpoint
        admission, PROTOCOL §14) only those keys', the others counted aside. A vote only makes a peer
        verify itself by recomputation (§14), so for that every key's counts."""
        out = {}
        for p, h in self.client.read_hashes(self.manifest.run_id, q).items():
            if h.round != q or (self.allowed is not None and p not in self.allowed):
                continue
            if voters is not None and p not in voters and p != self.peer_id:
                self.stats["votes_ignored"] += 1
                continue
            out[p] = h
        return out

    def _check_hashes(self, q: int, readings: int = 0) -> None:
        """Compare with the others' hash records for q. A disagreement is decided only on a later
        reading of the votes, max(R, settle) after the last, and not before every contributor of
        round q has voted or HASH_READINGS readings were made: a vote stored late (a slow peer, a
        skewed clock) must neither send a peer that is right to repair towards an early minority
        nor keep one that is wrong from seeing that it lost."""
        try:
            votes = {p: h for p, h in self._hash_votes(q).items() if p != self.peer_id}
            reported = {p: h.sha256 for p, h in votes.items()}
        except DHTUnavailable as e:
            log.warning("[%s] round=%d hash check skipped: %s", self.tag, q, e)
            return
        rep = compare_hashes(q, self.hashes[q], reported)
        readings += 1
        complete = len(reported) + 1 >= self.expected_voters.get(q, 0)
        if rep.disagree and (readings == 1 or not complete) and readings < HASH_READINGS:
            wait = max(self.manifest.round_seconds, self.manifest.settle_seconds)
            self.rechecks[q] = (time.time() + wait, readings)
            log.warning("[%s] round=%d weight hash disagrees with %d of %d peers (mine %s, majority %s; %d of %d contributors voted): "
                        "reading the votes again in %.0fs", self.tag, q, rep.disagree, len(reported), self.hashes[q][:12],
                        (rep.majority_sha256 or "tied")[:12], len(reported) + 1, self.expected_voters.get(q, 0), wait)
            return
        again = readings > 1
        self.agreement[q] = {"agree": rep.agree, "disagree": rep.disagree, "in_majority": rep.mine_in_majority}
        self.metrics.on_hash_check(not rep.disagree)
        if rep.mine_in_majority and rep.agree:
            self.verified.add((q, self.hashes[q]))
        if rep.disagree:
            self.stats["hash_mismatches"] += 1
            lost = not rep.mine_in_majority and rep.majority_sha256 is not None
            # diagnosis (§12): the same set digest means someone computed round q (or earlier rounds)
            # differently; another digest means other records were seen
            other = [h for h in votes.values() if h.sha256 != self.hashes[q]]
            same_set = sum(1 for h in other if h.set_digest == self.digests.get(q))
            self.agreement[q]["diagnosis"] = {"same_set_digest": same_set, "other_set_digest": len(other) - same_set}
            log.log(logging.ERROR if lost else logging.WARNING, "[%s] round=%d weight hash disagrees with %d of %d peers (mine %s, majority %s; "
                    "%d of them saw the same round set, %d another)%s", self.tag, q, rep.disagree, len(reported), self.hashes[q][:12],
                    (rep.majority_sha256 or "tied")[:12], same_set, len(other) - same_set, ": verifying by recomputation" if lost else "")
            if lost:
                self.repair_round = q
        else:
            self.stats["hash_agreements"] += 1
            if again:
                log.info("[%s] round=%d hash votes read again: all agree with this peer", self.tag, q)

    def _heartbeat(self) -> None:
        m = self.manifest
        last = max(self.hashes) if self.hashes else None
        hb = Heartbeat(version=__version__, round=self.applied, sha256=self.hashes.get(last, "") if last is not None else "",
                       made=self.stats["made"], p2p_id=self.transfer.p2p_id if self.transfer else "",
                       p2p_addrs=self.transfer.addrs if self.transfer else [], rate=round(self.stats["made"] / max(1e-9, time.time() - m.start_time), 4) if time.time() > m.start_time else 0.0)
        try:
            self.client.publish_heartbeat(m.run_id, hb, 2.5 * BEAT_SECONDS)
            if time.time() >= self.next_announce:
                self.next_announce = time.time() + ANNOUNCE_SECONDS
                self.client.announce_run(RunAnnouncement(run_id=m.run_id, model=m.model, task=m.dataset, round=self.applied,
                                                         protocol_version=m.protocol_version), 2.5 * ANNOUNCE_SECONDS)
            if self.cfg.metrics_port is not None:  # a DHT read costs bytes: only when someone watches
                self.metrics.on_live_peers(len(self.client.read_peers(m.run_id)))
        except DHTUnavailable as e:
            log.warning("[%s] round=%d heartbeat failed: %s", self.tag, self.applied, e)

    def _evaluate(self, task=None, replica=None, limit: int | None = None) -> dict:
        import torch

        task, replica = task or self.task, replica or self.replica
        with torch.no_grad():
            ev = task.evaluate(replica.model, batch_size=self.cfg.eval_batch_size, limit=limit or self.cfg.eval_size)
        self.metrics.on_eval(ev.get("accuracy"), ev.get("loss"), ev.get("balanced_accuracy"))
        log.info("[%s] round=%d eval %s", self.tag, self.applied, " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()))
        return ev

    def _round_log(self, event: dict) -> None:
        """Best effort: a full disk or a removed folder stops the log with one warning, not the peer."""
        if self.cfg.round_log:
            try:
                Path(self.cfg.round_log).parent.mkdir(parents=True, exist_ok=True)
                with open(self.cfg.round_log, "a") as f:
                    f.write(json.dumps(event) + "\n")
            except OSError as e:
                log.warning("[%s] round=%d cannot write the round log %s (%s); no more round-log lines", self.tag, self.applied,
                            self.cfg.round_log, e.strerror or e)
                self.cfg.round_log = None

    def _finish(self, before, after, seconds: float) -> dict:
        interrupted = self.stop.is_set()
        final = self.replica.sha256()
        if interrupted:
            log.info("[%s] round=%d left the run on request after applying %d rounds", self.tag, self.applied, self.stats["rounds_applied"])
        stages = {"round": Counter({k.removeprefix("rejected_"): v for k, v in self.stats.items() if k.startswith("rejected_")}),
                  "parse": Counter(self.client.rejected), "validator": Counter(self.client.validator_rejections())}
        report = {
            "peer_id": self.peer_id, "run_id": self.manifest.run_id, "run_creator": self.run_creator, "onebyte_version": __version__, "protocol_version": self.manifest.protocol_version,
            "interrupted": interrupted, "rounds_applied": self.stats["rounds_applied"], "last_round": self.applied,
            "contributions_made": self.stats["made"], "contributions_published": self.stats["published"],
            "contributions_applied_local": self.stats["applied_local"], "contributions_applied_remote": self.stats["applied_remote"],
            "missed_deadline": self.stats["missed_deadline"], "skipped_nonfinite": self.stats["skipped_nonfinite"],
            "hash_agreements": self.stats["hash_agreements"], "hash_mismatches": self.stats["hash_mismatches"],
            "repairs": self.stats["repairs"], "repairs_failed": self.stats["repair_failed"],
            "catchups": {"log": self.stats["catchups_log"], "checkpoint": self.stats["catchups_checkpoint"]},
            "checkpoints_rejected": self.stats["checkpoints_rejected"], "checkpoints_refused": self.stats["checkpoints_refused"],
            "repairs_refused": self.stats["repairs_refused"], "recomputations": self.stats["recomputations"],
            "votes_ignored": self.stats["votes_ignored"], "suspects": self.suspects,
            "rejected": dict(sum(stages.values(), Counter())), "rejected_by_stage": {k: dict(v) for k, v in stages.items()},
            "final_sha256": final, "hashes": {str(k): v for k, v in sorted(self.hashes.items())}, "agreement": {str(k): v for k, v in self.agreement.items()},
            "eval_before": before, "eval_after": after, "eval_curve": self.curve, "seconds": seconds, "manifest": self.manifest.model_dump(),
            "mean_train_loss": self.stats["loss_sum"] / self.stats["made"] if self.stats["made"] else None,
        }
        if self.cfg.report:
            write_json_atomic(self.cfg.report, report)
        return report

    def close(self) -> None:
        if self.transfer is not None:
            self.transfer.close()
        try:
            if self.dht.is_alive():
                self.dht.shutdown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def run_peer(cfg: SwarmConfig) -> dict:
    peer = SwarmPeer(cfg)

    def on_signal(signum, frame):
        if peer.stop.is_set():
            raise KeyboardInterrupt
        log.info("[%s] round=%d stopping: finishing the current step (Ctrl-C again to abort)", peer.tag, peer.applied)
        peer.stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return peer.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        peer.close()

