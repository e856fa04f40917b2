"""A swarm peer: the step loop of onebyte when many peers train one model over the DHT.

One loop, driven by the wall-clock rounds of the run manifest; each step does the most urgent
thing and comes back:
  beat      a heartbeat every minute so others can see who is alive, where, and how to reach it;
  repair    after losing a hash vote, verify by recomputation (onebyte.peer.repair);
  catch up  when far behind, from other peers' logs or checkpoints (onebyte.peer.catchup);
  apply     the next round that became final: read its records, decide its set, apply it;
  vote      read the others' weight hashes of hash rounds (onebyte.peer.voting);
  make      contributions for the current round on this peer's data, and publish them as one
            signed record before the deadline (onebyte.peer.contributor).
The collaborators own their state; this file only wires them and runs the loop.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from onebyte import __version__
from onebyte.coordinator_free.agreement import RoundSet
from onebyte.coordinator_free.policy import RoundPolicy
from onebyte.coordinator_free.seedlog import SeedLog
from onebyte.dht.client import DHTUnavailable
from onebyte.dht.records import Heartbeat, RunAnnouncement
from onebyte.peer.applier import RoundApplier
from onebyte.peer.catchup import CatchUp
from onebyte.peer.checkpoints import CheckpointDir
from onebyte.peer.contributor import Contributor
from onebyte.peer.join import JoinedRun, Joiner, ManifestConflict, evaluate, train_config
from onebyte.peer.node import Node
from onebyte.peer.repair import Repair
from onebyte.peer.report import PeerReport, RoundLog, write_report
from onebyte.peer.served import InitialWeights, start_transfer
from onebyte.peer.state import ReplicaState
from onebyte.peer.train import build
from onebyte.peer.voting import HashVoting
from onebyte.settings import SwarmConfig

__all__ = ["ManifestConflict", "SwarmConfig", "SwarmPeer", "run_peer"]

log = logging.getLogger("onebyte.peer")

# Every DHT operation costs kilobytes on the wire (several RPCs, each a new libp2p stream), so what
# is not per-round data goes out on a slower clock: liveness every BEAT_SECONDS, the run's entry
# in the public run list every ANNOUNCE_SECONDS (see BENCHMARKS.md, bytes on the wire).
BEAT_SECONDS = 60.0
ANNOUNCE_SECONDS = 300.0
READ_TRIES = 5  # reads of a final round's records before trying again a round later


class SwarmPeer:
    def __init__(self, node: Node, joined: JoinedRun, cfg: SwarmConfig):
        self.node, self.joined, self.cfg = node, joined, cfg
        m, tag, stats, metrics = joined.manifest, node.tag, node.stats, node.metrics
        self.manifest, self.replica, self.task = m, joined.replica, joined.task
        self.policy = RoundPolicy.from_manifest(m)
        self.clock = self.policy.clock
        metrics.on_start(
            version=__version__,
            protocol_version=m.protocol_version,
            model=m.model,
            run_id=m.run_id,
            peer_id=node.peer_id,
            dataset=m.dataset,
        )
        folder = Path(cfg.checkpoint_dir) / m.run_id if cfg.checkpoint_dir else None
        self.state = ReplicaState(joined.replica, SeedLog(folder / "seedlog.jsonl" if folder else None))
        self.round_log = RoundLog(cfg.round_log, tag)
        common = dict(peer_id=node.peer_id, tag=tag, stats=stats, metrics=metrics)
        self.voting = HashVoting(
            self.state, self.policy, node.client, hash_every=m.hash_every, settle_seconds=m.settle_seconds, **common
        )
        self.applier = RoundApplier(self.state, self.policy, observers=[self.voting.observe], **common)
        self.checkpoints = CheckpointDir(
            folder, m, self.state, every_seconds=cfg.checkpoint_seconds, tag=tag, stats=stats, metrics=metrics
        )
        if folder:
            self.checkpoints.resume(self.applier)
        self.transfer = start_transfer(
            node.dht,
            m.run_id,
            self.state,
            self.checkpoints,
            stop=node.stop,
            tag=tag,
            stats=stats,
            initial=InitialWeights(m.initial_sha256, self._initial_weights),
            on_served=metrics.on_served,
        )
        self.catchup = CatchUp(
            self.state,
            self.applier,
            self.voting,
            self.transfer,
            node.client,
            hash_every=m.hash_every,
            mode=cfg.catch_up,
            progress=cfg.progress,
            stop=node.stop,
            round_log=self.round_log,
            **common,
        )
        self.repair = Repair(
            self.state,
            self.applier,
            self.voting,
            self.catchup,
            self.checkpoints,
            node.client,
            initial_sha256=m.initial_sha256,
            initial_weights=self._initial_weights,
            **common,
        )
        self.contributor = Contributor(
            joined.replica,
            joined.task,
            joined.pool,
            self.policy,
            node.client,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            population=cfg.population,
            **common,
        )
        self.suspects: dict[str, dict] = {}  # peers the influence monitor flagged (the report's)
        self.curve: list[dict] = []  # --eval-every: held-out scores on a fixed subset as the run goes
        self.next_read_at = 0.0  # after a round could not be read from the DHT: when to try again
        self.next_announce = 0.0  # the public run list is refreshed every ANNOUNCE_SECONDS, from the first heartbeat on
        # round r-1 becomes final `settle` after round r opens: that much lag is normal, not falling behind
        self.lag_allowed = cfg.max_lag + math.ceil(m.settle_seconds / m.round_seconds)
        log.info(
            "[%s] round=%d joined run %s of creator %s (model %s, %d trainable, lr %g, eps %g, %d "
            "contributions/round, %.0fs "
            "rounds, shard %d/%d of %d examples)",
            tag,
            self.clock.round_at(time.time()),
            m.run_id,
            joined.creator,
            m.model,
            self.replica.num_trainable,
            m.lr,
            m.eps,
            m.contribs_per_round,
            m.round_seconds,
            cfg.shard[0],
            cfg.shard[1],
            len(joined.pool),
        )

    @property
    def applied(self) -> int:
        return self.state.applied

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, stop = self.cfg, self.node.stop
        before = self.joined.before or (self._evaluate() if cfg.evaluate else None)
        if cfg.follow_only:
            last_round = self.clock.last_final(time.time())
        else:
            self.contributor.warm_up(progress=cfg.progress)
            last_round = (cfg.rounds - 1) if cfg.rounds else math.inf
        next_beat = 0.0
        started = time.time()
        while not stop.is_set():
            now = time.time()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + BEAT_SECONDS
            if self.voting.lost is not None:
                q, self.voting.lost = self.voting.lost, None
                self.repair(q)
                continue
            newest = min(self.clock.last_final(now), last_round)
            if self.catchup.wanted(newest, now):
                self.catchup.attempt(newest, now)
                continue
            if self.applied < newest and now >= self.next_read_at:
                self._apply_live(self.applied + 1)
                continue
            if self.voting.check_due(now):
                continue
            if self.applied >= last_round:
                break
            # fresh: at most max_lag rounds behind the newest final round, however late rounds settle (short rounds)
            fresh = self.applied >= self.clock.last_final(now) - cfg.max_lag
            if not cfg.follow_only and self.contributor.step(now, last_round, self.applied, self.lag_allowed, fresh):
                continue
            r_now = self.clock.round_at(now)
            wake = min(
                max(self.clock.final_at(self.applied + 1), self.next_read_at), next_beat, self.clock.open_at(r_now + 1)
            )
            if self.contributor.waiting(r_now):
                wake = min(wake, self.clock.publish_by(r_now))  # a partly filled round goes out on time
            stop.wait(max(0.01, min(wake - time.time(), 1.0)))
        self.voting.settle(stop)  # disputes are decided before leaving, not repaired
        after = self._evaluate() if cfg.evaluate and not stop.is_set() else None
        return self._finish(before, after, time.time() - started)

    def _apply_live(self, q: int) -> None:
        """Read round q's records from the DHT, decide its set, apply it, and vote at hash rounds."""
        for attempt in range(READ_TRIES):
            try:
                records = self.node.client.read_round(self.policy.run_id, q)
                break
            except DHTUnavailable as e:
                if not self.node.dht.is_alive():
                    raise
                log.warning("[%s] round=%d read failed (%s), retrying", self.node.tag, q, e)
                self.node.stop.wait(1.0 + attempt)
        else:  # the DHT runs but this key cannot be read: try again later; far behind, catch-up from peers takes over
            self.node.stats["round_read_failed"] += 1
            self.next_read_at = time.time() + self.clock.round_seconds
            log.error(
                "[%s] round=%d could not be read from the DHT in 5 tries; trying again in %.0fs",
                self.node.tag,
                q,
                self.clock.round_seconds,
            )
            return
        rs = self.policy.decide(q, records, self.state.seedlog.get)
        own = records.get(self.node.peer_id)
        if own is not None and own.published_at <= self.clock.close(q) and self.node.peer_id not in rs.counts:
            self.node.stats["own_record_not_counted"] += 1
            self.node.metrics.own_dropped.inc()
            log.warning(
                "[%s] round=%d this peer's own record is not in the round set (%s)",
                self.node.tag,
                q,
                ", ".join(f"{k} {n}" for k, n in rs.rejected.items()),
            )
        for reason, n in rs.rejected.items():
            self.node.stats[f"rejected_{reason}"] += n
            self.node.metrics.on_rejected(reason, n)
        self.node.metrics.on_received(sum(len(rec.codes) for p, rec in records.items() if p != self.node.peer_id))
        self.node.metrics.sync_rejections(self.node.client)
        self._applied(rs, self.applier.apply(rs, live=True))

    def _applied(self, rs: RoundSet, apply_s: float) -> None:
        """After a live round: the hash vote, a checkpoint and the influence watch at hash rounds,
        then its log lines and, every ``eval_every`` rounds, a held-out score."""
        q, cfg = rs.round, self.cfg
        sha = None
        if q % self.manifest.hash_every == 0 or (cfg.rounds and q == cfg.rounds - 1):
            sha = self.state.hashes[q] = self.replica.sha256()
            self.voting.hash_round(rs, sha)
            self.checkpoints.maybe_save(q, sha)
            self._watch_influence(q)
        log.info(
            "[%s] round=%d applied %d contributions from %d peers in %.2fs%s",
            self.node.tag,
            q,
            len(rs.contributions),
            len(rs.counts),
            apply_s,
            f" hash={sha[:12]}" if sha else "",
        )
        self.round_log.write(
            {
                "event": "applied",
                "round": q,
                "time": time.time(),
                "contributions": len(rs.contributions),
                "peers": len(rs.counts),
                "local": rs.counts.get(self.node.peer_id, 0),
                "sha256": sha,
                "loss": self.contributor.last_loss,
                "apply_seconds": apply_s,
                "latency_seconds": time.time() - self.clock.close(q),
            }
        )
        if cfg.eval_every and (q + 1) % cfg.eval_every == 0 and not self.node.stop.is_set():
            ev = self._evaluate(limit=cfg.eval_every_size)
            self.curve.append({"round": q, **ev})
            self.round_log.write({"event": "eval", "round": q, "time": time.time(), "subset": True, **ev})

    def _watch_influence(self, q: int) -> None:
        suspects = self.applier.influence.suspects()
        self.node.metrics.on_suspects(len(suspects))
        for s in suspects:
            if s.peer_id not in self.suspects:
                log.warning(
                    "[%s] round=%d peer %s pushes far harder than the swarm (%s: %.0f%% saturated codes, "
                    "median |g| %.3g vs "
                    "%.3g); its influence stays within the codec's bound",
                    self.node.tag,
                    q,
                    s.peer_id[:8],
                    s.reason,
                    100 * s.saturated_share,
                    s.median_magnitude,
                    s.swarm_median_magnitude,
                )
            self.suspects[s.peer_id] = {
                "reason": s.reason,
                "saturated_share": s.saturated_share,
                "median_magnitude": s.median_magnitude,
                "swarm_median_magnitude": s.swarm_median_magnitude,
                "round": q,
            }

    def _heartbeat(self) -> None:
        m, node, t = self.manifest, self.node, self.transfer
        hashes = self.state.hashes
        made = node.stats["made"]
        rate = round(made / max(1e-9, time.time() - m.start_time), 4) if time.time() > m.start_time else 0.0
        hb = Heartbeat(
            version=__version__,
            round=self.applied,
            sha256=hashes[max(hashes)] if hashes else "",
            made=made,
            p2p_id=t.p2p_id if t else "",
            p2p_addrs=t.addrs if t else [],
            rate=rate,
        )
        try:
            node.client.publish_heartbeat(m.run_id, hb, 2.5 * BEAT_SECONDS)
            if time.time() >= self.next_announce:
                self.next_announce = time.time() + ANNOUNCE_SECONDS
                node.client.announce_run(
                    RunAnnouncement(
                        run_id=m.run_id,
                        model=m.model,
                        task=m.dataset,
                        round=self.applied,
                        protocol_version=m.protocol_version,
                    ),
                    2.5 * ANNOUNCE_SECONDS,
                )
            if self.cfg.metrics_port is not None:  # a DHT read costs bytes: only when someone watches
                node.metrics.on_live_peers(len(node.client.read_peers(m.run_id)))
        except DHTUnavailable as e:
            log.warning("[%s] round=%d heartbeat failed: %s", node.tag, self.applied, e)

    def _evaluate(self, limit: int | None = None) -> dict:
        return evaluate(self.task, self.replica, self.cfg, self.node, self.applied, limit)

    def _initial_weights(self) -> dict:
        """The run's initial trainable tensors, rebuilt exactly as at join (a repair's oldest base)."""
        return {
            name: t.detach().cpu()
            for name, t in build(train_config(self.manifest.model_dump(), self.cfg))[2].state_tensors()
        }

    def _finish(self, before, after, seconds: float) -> dict:
        node = self.node
        interrupted = node.stop.is_set()
        if interrupted:
            log.info(
                "[%s] round=%d left the run on request after applying %d rounds",
                node.tag,
                self.applied,
                node.stats["rounds_applied"],
            )
        stages = {
            "round": Counter(
                {k.removeprefix("rejected_"): v for k, v in node.stats.items() if k.startswith("rejected_")}
            ),
            "parse": Counter(node.client.rejected),
            "validator": Counter(node.client.validator_rejections()),
        }
        report = PeerReport.of(
            peer_id=node.peer_id,
            manifest=self.manifest,
            run_creator=self.joined.creator,
            interrupted=interrupted,
            applied=self.applied,
            stats=node.stats,
            rejected_by_stage=stages,
            suspects=self.suspects,
            final_sha256=self.replica.sha256(),
            hashes=self.state.hashes,
            agreement=self.voting.agreement,
            before=before,
            after=after,
            curve=self.curve,
            seconds=seconds,
        )
        write_report(self.cfg.report, report)
        return report.model_dump()

    def close(self) -> None:
        if self.transfer is not None:
            self.transfer.close()


def run_peer(cfg: SwarmConfig, *, keep: list | None = None, node: Node | None = None) -> dict:
    """Join (or create) the run and train until ``cfg.rounds``, a signal or ``node.stop``; returns the report.
    With ``keep``, the peer is appended to it (to read its replica after the run: onebyte export). A caller that
    runs the peer in a thread passes the ``node`` it made in its own thread (its DHT node is a forked process)."""
    node = node or Node(cfg)
    peer: SwarmPeer | None = None

    def on_signal(signum, frame):
        if node.stop.is_set():
            raise KeyboardInterrupt
        log.info(
            "[%s] round=%d stopping: finishing the current step (Ctrl-C again to abort)",
            node.tag,
            peer.applied if peer else -1,
        )
        node.stop.set()

    in_main = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        peer = SwarmPeer(node, Joiner(node, cfg).join(), cfg)
        if keep is not None:
            keep.append(peer)
        return peer.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if peer is not None:
            peer.close()
        node.close()
