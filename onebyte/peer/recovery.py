"""Restart, catch-up and repair: how a swarm peer gets back to the swarm's exact weights.

These are methods of SwarmPeer (onebyte/peer/swarm.py), kept apart so that the step loop stays
readable on its own. The loop calls three of them: ``_resume`` when it starts with a checkpoint
directory, ``_catch_up`` when it is more than a few rounds behind, ``_repair`` when it lost a
hash vote. docs/PROTOCOL.md §14 specifies what they do; onebyte.peer.catchup picks the plan.
"""

from __future__ import annotations

import logging
import random
import time

from onebyte.coordinator_free.agreement import agreed_hash
from onebyte.coordinator_free.seedlog import SeedLogError, replay_set
from onebyte.dht.client import DHTUnavailable
from onebyte.dht.wire import clip
from onebyte.dht.transfer import ServedState, Transfer, TransferError
from onebyte.peer import catchup
from onebyte.peer.checkpoint import CheckpointError, install_state, load_checkpoint, save_checkpoint

log = logging.getLogger("onebyte.peer")

LOG_FETCH_ROUNDS = 500  # rounds per seed-log request
# catch-up sources (PROTOCOL §14, "Bounds"): fake heartbeats whose addresses stall must not make a joiner wait on each
MAX_PROBED = 64  # peers asked for .info per catch-up attempt
MAX_SOURCES = 8  # of those that answered, the ones whose plans are tried
MIN_SOURCES = 2  # peers the DHT does not vouch for are asked only when fewer than this many others answered
PROBE_SECONDS = 4.0  # dial + .info, per peer, all at once
PROBE_CONCURRENCY = 32
FAILED_BACKOFF = 120.0  # a peer that failed is asked last for this long
KEEP_CHECKPOINTS = 2


class RecoveryMixin:
    def _start_transfer(self, run_id: str) -> Transfer | None:
        """Serve our log and checkpoint over p2p; a peer that cannot still trains (it just cannot help others)."""
        for attempt in range(3):
            try:
                t = Transfer(self.dht, run_id)
                # no checkpoint of this model is larger: a download stops here whatever a source advertised
                # (16-bit tensors may travel as binary32, PROTOCOL §14: 4 bytes per element at least)
                t.state_limit = (sum(p.numel() * max(4, p.element_size()) for _, p in self.replica.params), len(self.replica.params))
                t.serve(ServedState(self.seedlog.span, self.seedlog.lines, self.seedlog.contributions, lambda: self.checkpoint))
                return t
            except (OSError, TransferError, RuntimeError) as e:
                log.warning("[%s] round=%d p2p catch-up service not started (attempt %d): %s: %s", self.tag, self.applied, attempt + 1, type(e).__name__, e)
                self.stop.wait(1.0 + attempt)
        self.stats["transfer_unavailable"] += 1
        return None

    def _estimate_apply_cost(self) -> float:
        """Seconds to apply one contribution, before any was applied: ~1.5 copies of the trainable
        weights (BENCHMARKS.md (b)), timed on the largest tensor."""
        import torch

        name, big = max(self.replica.params, key=lambda kv: kv[1].numel())
        scratch = torch.empty_like(big)
        t0 = time.perf_counter()
        scratch.copy_(big)
        return 1.5 * (time.perf_counter() - t0) * self.replica.num_trainable / big.numel()

    def _maybe_checkpoint(self, q: int, sha: str) -> None:
        if not self.ckdir or time.time() - self.last_checkpoint_at < self.cfg.checkpoint_seconds:
            return
        t0 = time.perf_counter()
        path = self.ckdir / f"ckpt-{q:09d}.safetensors"
        try:
            info = save_checkpoint(path, self.replica.params, q, {"run_id": self.manifest.run_id, "initial_sha256": self.manifest.initial_sha256})
        except OSError as e:
            log.error("[%s] round=%d checkpoint not written: %s", self.tag, q, e)
            return
        assert info.sha256 == sha
        self.checkpoint, self.last_checkpoint_at = (path, q, sha), time.time()
        for old in sorted(self.ckdir.glob("ckpt-*.safetensors"))[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        self.metrics.on_checkpoint()
        log.info("[%s] round=%d checkpoint %s written in %.2fs", self.tag, q, path.name, time.perf_counter() - t0)

    def _resume(self) -> None:
        """Restart: load the newest intact checkpoint of this run, then replay this peer's own log."""
        expect = {"run_id": self.manifest.run_id, "initial_sha256": self.manifest.initial_sha256}
        for path in sorted(self.ckdir.glob("ckpt-*.safetensors"), reverse=True):
            try:
                info = load_checkpoint(path, self.replica.params, expect)
            except CheckpointError as e:
                self.stats["checkpoints_rejected"] += 1
                aside = path.with_name(path.name + ".refused")  # kept for inspection, out of rotation and serving
                path.replace(aside)
                log.warning("[%s] round=%d not resuming from %s (moved to %s): %s", self.tag, self.applied, path.name, aside.name, e)
                continue
            self.applied, self.hashes[info.round] = info.round, info.sha256
            self.checkpoint, self.last_checkpoint_at = (path, info.round, info.sha256), time.time()
            break
        first = self.applied + 1
        while (line := self.seedlog.get(self.applied + 1)) is not None and self.applied + 1 <= self.clock.last_final(time.time()):
            try:
                self._apply_set(replay_set(self.manifest.run_id, line, contribs_per_round=self.manifest.contribs_per_round, codec=self.replica.codec), replayed=True)
            except SeedLogError as e:
                log.warning("[%s] round=%d own seed log unusable from here: %s", self.tag, self.applied + 1, e)
                break
        if self.applied >= 0:
            log.info("[%s] round=%d resumed from %s and replayed own log rounds %d..%d", self.tag, self.applied,
                     self.checkpoint[0].name if self.checkpoint else "the initial weights", first, self.applied)

    def _sources(self, trusted: set[str] | None = None) -> tuple[list[catchup.Source], int]:
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
            beats = self.client.read_peers(self.manifest.run_id)
        except DHTUnavailable as e:
            log.warning("[%s] round=%d no peer list: %s", self.tag, self.applied, e)
            return [], 1
        now = time.time()
        health = self.transfer.health
        known = self.client.routing_peers()
        cands = [(pid, hb) for pid, hb in beats.items()
                 if pid != self.peer_id and hb.p2p_id and (trusted is None or pid in trusted)]

        def rank(c):
            ok, failed, last_failed = health.get(c[1].p2p_id, (0, 0, 0.0))
            recent_failure = bool(failed) and now - last_failed < FAILED_BACKOFF
            vouched = c[1].p2p_id in known or ok > 0
            return (recent_failure, not vouched, -min(ok, 3), failed, random.random())

        cands.sort(key=rank)
        cands = cands[:MAX_PROBED]
        first = [c for c in cands if rank(c)[:2] == (False, False)]
        answers = self.transfer.probe([(hb.p2p_id, list(hb.p2p_addrs)) for _, hb in first], deadline=PROBE_SECONDS, concurrency=PROBE_CONCURRENCY)
        asked = list(first)
        if sum(isinstance(a, dict) for a in answers.values()) < MIN_SOURCES:
            rest = [c for c in cands if c not in first]
            answers |= self.transfer.probe([(hb.p2p_id, list(hb.p2p_addrs)) for _, hb in rest], deadline=PROBE_SECONDS,
                                           concurrency=PROBE_CONCURRENCY)
            asked += rest
        out, failures = [], []
        for pid, hb in asked:
            info = answers.get(hb.p2p_id)
            if isinstance(info, dict):
                span = tuple(info["log"]) if info["log"] else None
                out.append(catchup.Source(pid, hb.p2p_id, span, info["contributions"], info["checkpoint"]))
            else:
                failures.append((pid, info))
        unasked = len(beats) - len(asked) - (self.peer_id in beats)
        if failures:
            self.stats["sources_failed"] += len(failures)
            examples = "; ".join(f"{p[:8]}: {clip(why, 80)}" for p, why in failures[:3])
            log.info("[%s] round=%d %d of %d peer(s) asked cannot serve catch-up (%d not asked) (e.g. %s)", self.tag, self.applied,
                     len(failures), len(asked), unasked, examples)
        fresh = [s for s in out if not rank((s.peer_id, beats[s.peer_id]))[0]]  # sources that failed lately go only when no other answered
        return (fresh or out)[:MAX_SOURCES], len(failures)

    def _swarm_hash(self, q: int) -> str | None:
        """The agreed hash for round q among the votes that count (§12), None if there are none."""
        return agreed_hash([h.sha256 for h in self._hash_votes(q).values()])

    def _catch_up(self, target: int, *, trusted: set[str] | None = None, state_valid: bool = True) -> str:
        """Reach ``target`` through the cheapest plan other peers offer: "done", "nobody" (no peer
        can help) or "failed" (some could, or could not be reached, and none succeeded)."""
        t0 = time.time()
        start = self.applied
        sources, unreachable = self._sources(trusted)
        options = catchup.plans(self.applied, target, sources, apply_seconds_per_contribution=self._apply_s_per_contribution,
                                bandwidth=self.bandwidth, state_valid=state_valid)
        if self.cfg.catch_up != "auto":
            options = [p for p in options if p.method == self.cfg.catch_up]
        for plan in options:
            try:
                if plan.method == "checkpoint":
                    self._install_checkpoint(plan.source)
                self._replay_log(plan.source, target)
            except (TransferError, CheckpointError, SeedLogError, DHTUnavailable) as e:
                log.warning("[%s] round=%d catch-up by %s from %s failed: %s", self.tag, self.applied, plan.method, plan.source.peer_id[:8], e)
                if plan.method == "checkpoint" and self.applied != start:
                    break  # the checkpoint is in: the normal loop reads the rest from the DHT
                continue
            break
        else:
            outcome = "failed" if options or unreachable else "nobody"
            log.info("[%s] round=%d no catch-up to round %d: %s", self.tag, self.applied, target,
                     "no peer offers one" if outcome == "nobody" else f"{len(options)} plan(s) failed, {unreachable} peer(s) unreachable")
            return outcome
        seconds = time.time() - t0
        self.stats[f"catchups_{plan.method}"] += 1
        self.metrics.on_catchup(plan.method, seconds)
        log.info("[%s] round=%d caught up from round %d by %s from %s in %.2fs (estimated %.2fs)", self.tag, self.applied, start, plan.method,
                 plan.source.peer_id[:8], seconds, plan.seconds)
        self._round_log({"event": "catchup", "time": time.time(), "method": plan.method, "from_round": start, "round": self.applied, "seconds": seconds})
        return "done"

    def _install_checkpoint(self, src: catchup.Source) -> None:
        t0 = time.time()
        size = src.checkpoint["bytes"]
        meta, tensors = self.transfer.fetch_state(src.p2p_id, timeout=max(60.0, 4 * size / self.bandwidth))
        self.bandwidth = max(1e5, size / max(1e-3, time.time() - t0))
        q, sha = int(meta["round"]), str(meta["sha256"])
        agreed = self._swarm_hash(q)
        if agreed != sha:
            raise CheckpointError(f"checkpoint of round {q} from {src.peer_id[:8]} hashes {sha[:12]}, the swarm reported {(agreed or 'nothing')[:12]}")
        install_state(tensors, self.replica.params, sha, f"round {q} from peer {src.peer_id[:8]}")
        self.applied, self.hashes[q] = q, sha
        self.hashes = {k: v for k, v in self.hashes.items() if k <= q}
        self.pending_checks = [k for k in self.pending_checks if k <= q]
        log.info("[%s] round=%d installed checkpoint from %s (%.1f MB in %.2fs, hash %s agreed)", self.tag, q, src.peer_id[:8],
                 size / 1e6, time.time() - t0, sha[:12])

    def _replay_log(self, src: catchup.Source, target: int) -> None:
        from tqdm import tqdm

        m = self.manifest
        last = min(target, src.log[1]) if src.log else self.applied
        with tqdm(total=max(0, last - self.applied), desc=f"catch-up {self.tag}", unit="round", disable=not self.cfg.progress, leave=False) as bar:
            while self.applied < last and not self.stop.is_set():
                lines = self.transfer.fetch_log(src.p2p_id, self.applied + 1, min(last, self.applied + LOG_FETCH_ROUNDS))
                if not lines:
                    raise TransferError(f"peer {src.peer_id[:8]} sent no log for round {self.applied + 1}")
                for line in lines:
                    rs = replay_set(m.run_id, line, contribs_per_round=m.contribs_per_round, codec=self.replica.codec)
                    if rs.round != self.applied + 1:
                        raise SeedLogError(f"log from {src.peer_id[:8]} jumps from round {self.applied} to {rs.round}")
                    self._apply_set(rs, replayed=True)
                    bar.update(1)

    def _repair(self) -> None:
        """This peer lost a hash vote: reinstall the majority's state from a peer that has it."""
        q, self.repair_round = self.repair_round, None
        votes = self._hash_votes(q)
        majority = agreed_hash([h.sha256 for h in votes.values()])
        trusted = {p for p, h in votes.items() if h.sha256 == majority}
        trusted.discard(self.peer_id)
        target = self.clock.last_final(time.time())
        if self.cfg.rounds:
            target = min(target, self.cfg.rounds - 1)
        log.warning("[%s] round=%d repairing: round %d disagreed with the majority %s; %d peer(s) can help", self.tag, self.applied, q,
                    (majority or "?")[:12], len(trusted))
        if majority and trusted and self._catch_up(target, trusted=trusted, state_valid=False) == "done":
            self.stats["repairs"] += 1
            self.rechecks.clear()  # votes lost before the repair compared the weights it replaced
            self.metrics.on_repair()
            log.warning("[%s] round=%d repaired", self.tag, self.applied)
        else:
            self.stats["repair_failed"] += 1
            log.error("[%s] round=%d repair failed; will try again at the next disagreement", self.tag, self.applied)
