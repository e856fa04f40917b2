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

from collections import Counter

from onebyte.coordinator_free.agreement import agreed_hash, decide_round
from onebyte.coordinator_free.seedlog import SeedLogError, parse_line, replay_set
from onebyte.dht.client import DHTUnavailable
from onebyte.dht.wire import clip
from onebyte.p2p.transfer import ServedState, Transfer, TransferError
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
            self.verified.add((info.round, info.sha256))  # the state this peer resumes from is its base
            break
        first = self.applied + 1
        while (line := self.seedlog.get(self.applied + 1)) is not None and self.applied + 1 <= self.clock.last_final(time.time()):
            try:
                self._apply_set(replay_set(self.manifest.run_id, line, contribs_per_round=self.manifest.contribs_per_round, codec=self.replica.codec, rule=self.manifest.rule), replayed=True)
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

    def _round_contributors(self, q: int) -> frozenset[str]:
        """Keys in round q's set: this peer's own record if it applied q live, else decided now from
        the signed records the DHT holds for q (they live LOG_TTL)."""
        if q in self.voters:
            return self.voters[q]
        m = self.manifest
        records = self.client.read_round(m.run_id, q)
        rs = decide_round(m.run_id, q, records, close_time=self.clock.close(q), contribs_per_round=m.contribs_per_round,
                          codec=self.replica.codec, allowed=self.allowed, rule=m.rule)
        return frozenset(rs.counts)

    def _checkpoint_hash(self, q: int) -> str | None:
        """The hash a checkpoint of round q must have (§14): voted by more than half of round q's
        contributors (a contributor that has not voted counts against every hash, so votes that
        arrive before the others' cannot decide); None if there is no such hash."""
        contributors = self._round_contributors(q)
        votes = self._hash_votes(q, voters=contributors)
        counts = Counter(h.sha256 for p, h in votes.items() if p != self.peer_id)
        if not counts:
            return None
        sha, n = counts.most_common(1)[0]
        return sha if 2 * n > len(contributors - {self.peer_id}) else None

    def _admit_checkpoint(self, src: catchup.Source, target: int) -> None:
        """Refuse, before any byte is fetched, a checkpoint this peer cannot check (§14): of a round
        that is not a hash round, not yet final or past the target, or whose hash is not the strict
        majority of that round's contributors' votes. A refused offer is never considered again."""
        ck = src.checkpoint
        q, sha = int(ck["round"]), str(ck["sha256"])
        offer = (src.peer_id, q, sha)
        if offer in self.refused_offers:
            raise CheckpointError(f"checkpoint of round {q} from {src.peer_id[:8]} was refused before")
        newest = self.clock.last_final(time.time())
        agreed = None
        if q % self.manifest.hash_every:
            reason = f"round {q} is not a hash round"
        elif q > newest:
            reason = f"round {q} is not final yet (newest final round {newest})"
        elif q > target:
            reason = f"round {q} is past the round this peer is catching up to ({target})"
        else:
            agreed = self._checkpoint_hash(q)
            reason = None if agreed == sha else (f"its hash {sha[:12]} is not voted by more than half of round {q}'s contributors "
                                                 f"(such a hash: {(agreed or 'none')[:12]})")
        if reason:
            if not (q <= newest and not q % self.manifest.hash_every and agreed is None):
                self.refused_offers.add(offer)  # not while the votes may still come in: then it is asked again
            self.stats["checkpoints_refused"] += 1
            raise CheckpointError(f"checkpoint from {src.peer_id[:8]} refused: {reason}")

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
        elif self.applied >= 0:  # a peer with a state of its own replays onto it; only a fresh joiner takes a checkpoint (§14)
            options = [p for p in options if p.method == "log"]
        for plan in options:
            try:
                if plan.method == "checkpoint":
                    self._install_checkpoint(plan.source, target)
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

    def _install_checkpoint(self, src: catchup.Source, target: int) -> None:
        self._admit_checkpoint(src, target)
        t0 = time.time()
        size = src.checkpoint["bytes"]
        meta, tensors = self.transfer.fetch_state(src.p2p_id, timeout=max(60.0, 4 * size / self.bandwidth))
        self.bandwidth = max(1e5, size / max(1e-3, time.time() - t0))
        q, sha = int(meta["round"]), str(meta["sha256"])
        if (q, sha) != (int(src.checkpoint["round"]), str(src.checkpoint["sha256"])):
            self.refused_offers.add((src.peer_id, int(src.checkpoint["round"]), str(src.checkpoint["sha256"])))
            self.stats["checkpoints_refused"] += 1
            raise CheckpointError(f"peer {src.peer_id[:8]} sent round {q} hash {sha[:12]}, not the checkpoint it offered")
        install_state(tensors, self.replica.params, sha, f"round {q} from peer {src.peer_id[:8]}")
        self.anchor = (q, sha, {name: t.detach().cpu().clone() for name, t in self.replica.params})
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
                    rs = replay_set(m.run_id, line, contribs_per_round=m.contribs_per_round, codec=self.replica.codec, rule=m.rule)
                    if rs.round != self.applied + 1:
                        raise SeedLogError(f"log from {src.peer_id[:8]} jumps from round {self.applied} to {rs.round}")
                    self._apply_set(rs, replayed=True)
                    bar.update(1)

    # -- repair by recomputation ------------------------------------------------------------------
    def _bases(self, q: int):
        """States this peer can recompute from, newest first, each (round, sha256, load): its own
        checkpoints whose hash the swarm confirmed, the checkpoint it installed whole, the initial
        weights (whose hash is in the manifest)."""
        out = []
        if self.ckdir:
            for path in sorted(self.ckdir.glob("ckpt-*.safetensors"), reverse=True):
                r = int(path.stem.split("-")[1])
                out += [(r, sha, path) for (vr, sha) in self.verified if vr == r]
        if self.anchor is not None:
            out.append(self.anchor)
        out.append((-1, self.manifest.initial_sha256, None))
        return sorted([b for b in out if b[0] < q], key=lambda b: -b[0])

    def _load_base(self, base) -> None:
        r, sha, what = base
        if what is None:  # the initial weights: rebuilt exactly as at join (once per repair)
            from onebyte.peer.train import build

            if self._initial is None:
                self._initial = {name: t.detach().cpu() for name, t in build(self._train_config(self.manifest.model_dump()))[2].params}
            tensors = self._initial
        elif isinstance(what, dict):
            tensors = what
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(what))
        install_state(dict(tensors), self.replica.params, sha, f"base state of round {r}")

    def _recompute(self, base, lines: list[bytes]) -> str:
        """Load ``base`` and apply these seed-log entries (consecutive rounds after it) to the live
        replica; returns the resulting hash. Nothing else (log, counters, votes) changes."""
        m = self.manifest
        self._load_base(base)
        for line in lines:
            rs = replay_set(m.run_id, line, contribs_per_round=m.contribs_per_round, codec=self.replica.codec, rule=m.rule)
            self.replica.apply(rs.contributions)
        self.stats["recomputations"] += 1
        return self.replica.sha256()

    def _genuine(self, line: bytes) -> bool:
        """Every record of this seed-log entry is a signed, on-time record the DHT holds for its round
        (read and verified now, §9), with the same codes: nobody can put in a record its key did not
        sign. Checkable while the round's records live (LOG_TTL)."""
        m = self.manifest
        round_, _, records = parse_line(line)
        held = self.client.read_round(m.run_id, round_)
        return all(p in held and held[p].codes == codes and held[p].round == round_ and held[p].published_at <= self.clock.close(round_)
                   and (self.allowed is None or p in self.allowed) for p, codes in records)

    def _repair(self) -> None:
        """This peer lost a hash vote for round q (§12). It installs nothing it has not recomputed
        itself (§14): from a base state it holds (a confirmed own checkpoint, an installed one, or the
        initial weights) it replays its own log to q; if that gives the agreed hash, its live weights
        were damaged and are now repaired. Otherwise it fetches the log of a peer holding the agreed
        hash, keeps its own entries where they are equal, checks every differing entry record by
        record against the signed records in the DHT, and replays: only if that reproduces the agreed
        hash does it adopt that history. Else it keeps the state its own log gives."""
        q, self.repair_round = self.repair_round, None
        self._initial = None
        try:
            self._verify_or_repair(q)
        finally:
            self._initial = None

    def _verify_or_repair(self, q: int) -> None:
        try:
            votes = self._hash_votes(q)
        except DHTUnavailable as e:  # nothing changed yet; a failed read must not stop the peer, the next disagreement tries again
            self.stats["repair_failed"] += 1
            log.error("[%s] round=%d repair of round %d postponed: the votes could not be read (%s)", self.tag, self.applied, q, e)
            return
        majority = agreed_hash([h.sha256 for h in votes.values()])
        before = self.applied
        own_hash = self.hashes.get(q)
        if not majority or majority == own_hash:
            return
        bases = [b for b in self._bases(q) if all(self.seedlog.get(r) is not None for r in range(b[0] + 1, before + 1))]
        if not bases:
            self.stats["repair_failed"] += 1
            log.error("[%s] round=%d cannot verify round %d: no base state with a complete own log", self.tag, self.applied, q)
            return
        base = bases[0]
        own = [self.seedlog.get(r) for r in range(base[0] + 1, q + 1)]
        later = [self.seedlog.get(r) for r in range(q + 1, before + 1)]
        log.warning("[%s] round=%d verifying round %d by recomputation from round %d (own hash %s, agreed %s)", self.tag, self.applied, q,
                    base[0], (own_hash or "?")[:12], majority[:12])
        t0 = time.time()
        mine = self._recompute(base, own)
        if mine == majority:
            self.hashes[q] = mine
            self._replay_lines(q, later)
            self._repaired(q, majority, "own log: the live weights had been damaged", t0)
            return
        trusted = {p for p, h in votes.items() if h.sha256 == majority} - {self.peer_id}
        sources, _ = self._sources(trusted)
        # from the newest base, then from the oldest (the histories may have parted before the newest:
        # a partition both of whose halves confirmed their own states)
        for start in [base] + ([bases[-1]] if bases[-1] is not base else []):  # (a base may hold tensors: not hashable)
            mine_from = [self.seedlog.get(r) for r in range(start[0] + 1, q + 1)]
            for src in sources:
                if not src.log or src.log[0] > start[0] + 1 or src.log[1] < q:
                    continue
                try:
                    theirs = self.transfer.fetch_log(src.p2p_id, start[0] + 1, q)
                    merged = []
                    for r, line in zip(range(start[0] + 1, q + 1), theirs, strict=True):
                        if parse_line(line)[0] != r:
                            raise SeedLogError(f"entry for round {parse_line(line)[0]} where round {r} was due")
                        if line != mine_from[r - start[0] - 1] and not self._genuine(line):
                            raise SeedLogError(f"its entry for round {r} holds records the DHT does not")
                        merged.append(line)
                    if self._recompute(start, merged) != majority:
                        raise SeedLogError(f"its log from round {start[0] + 1} does not reproduce the agreed hash")
                except (TransferError, SeedLogError, DHTUnavailable, ValueError) as e:
                    log.warning("[%s] round=%d log of %s not adopted: %s", self.tag, self.applied, src.peer_id[:8], e)
                    continue
                for line in merged:
                    self.seedlog.put_line(line)
                self.verified = {v for v in self.verified if v[0] <= start[0]}
                if self.anchor is not None and self.anchor[0] > start[0]:
                    self.anchor = None
                self.applied = q
                self.hashes = {k: v for k, v in self.hashes.items() if k < q} | {q: majority}
                self.pending_checks = [k for k in self.pending_checks if k <= q]
                self._repaired(q, majority, f"log of {src.peer_id[:8]} from round {start[0] + 1}, differing entries checked against the DHT", t0)
                return  # the normal loop applies the rounds after q
        self._load_base(base)  # back to the state this peer's own log gives
        self._replay_lines(base[0], own)
        if mine == own_hash:  # confirmed by recomputation: a base for the next dispute
            self.verified.add((q, mine))
            if not any(b[0] == q for b in self._bases(q + 1)):  # no checkpoint file of q: keep the state itself
                self.anchor = (q, mine, {name: t.detach().cpu().clone() for name, t in self.replica.params})
        self._replay_lines(q, later)
        self.stats["repairs_refused"] += 1
        self.rechecks.pop(q, None)
        log.error("[%s] round=%d kept its state: the hash %s claimed for round %d by %d key(s) is not reproducible from signed records "
                  "(own log reproduces %s)", self.tag, self.applied, majority[:12], q, len(trusted), mine[:12])

    def _replay_lines(self, after: int, lines: list[bytes]) -> None:
        """Apply own log entries for rounds after..; the hashes of hash rounds on the way are
        recomputed (those taken from damaged weights are replaced)."""
        m = self.manifest
        for r, line in enumerate(lines, start=after + 1):
            self.replica.apply(replay_set(m.run_id, line, contribs_per_round=m.contribs_per_round, codec=self.replica.codec, rule=m.rule).contributions)
            if r in self.hashes:
                self.hashes[r] = self.replica.sha256()

    def _repaired(self, q: int, sha: str, how: str, t0: float) -> None:
        self.stats["repairs"] += 1
        self.rechecks.clear()  # votes lost before the repair compared the weights it replaced
        self.metrics.on_repair()
        self.verified.add((q, sha))
        log.warning("[%s] round=%d repaired by recomputation (%s) in %.2fs", self.tag, self.applied, how, time.time() - t0)
