"""Repair by recomputation: what a peer does after it lost a hash vote (PROTOCOL §12, §14).

It installs nothing it has not recomputed itself. From a base state it holds (a confirmed own
checkpoint, an installed one, or the initial weights) it replays its own log to the disputed
round; if that gives the agreed hash, its live weights were damaged and are now repaired.
Otherwise it fetches the log of a peer holding the agreed hash, keeps its own entries where they
are equal, checks every differing entry record by record against the signed records in the DHT,
and replays: only if that reproduces the agreed hash does it adopt that history. Else it keeps
the state its own log gives.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import torch
from safetensors.torch import load_file

from onebyte.coordinator_free.agreement import agreed_hash
from onebyte.coordinator_free.seedlog import SeedLogError, parse_line
from onebyte.dht.client import DHTUnavailable, RecordClient
from onebyte.metrics.peer import PeerMetrics
from onebyte.p2p.transfer import TransferError
from onebyte.peer.applier import RoundApplier
from onebyte.peer.catchup import CatchUp, genuine_entry
from onebyte.peer.checkpoint import install_state
from onebyte.peer.checkpoints import CheckpointDir
from onebyte.peer.state import Base, ReplicaState
from onebyte.peer.voting import HashVoting

log = logging.getLogger("onebyte.peer")


class Repair:
    def __init__(
        self,
        state: ReplicaState,
        applier: RoundApplier,
        voting: HashVoting,
        catchup: CatchUp,
        checkpoints: CheckpointDir,
        client: RecordClient,
        *,
        initial_sha256: str,
        initial_weights: Callable[[], dict[str, torch.Tensor]],
        peer_id: str,
        tag: str,
        stats: Counter,
        metrics: PeerMetrics,
    ):
        self.state, self.applier, self.voting, self.catchup = state, applier, voting, catchup
        self.checkpoints, self.client, self.policy = checkpoints, client, applier.policy
        self.initial_sha256, self.initial_weights = initial_sha256, initial_weights
        self.peer_id, self.tag, self.stats, self.metrics = peer_id, tag, stats, metrics

    def bases(self, q: int) -> list[Base]:
        """States this peer can recompute from, newest first: its own checkpoints whose hash the swarm
        confirmed, the checkpoint it installed whole, the initial weights (whose hash is in the manifest)."""
        out = self.checkpoints.confirmed_bases()
        if self.state.anchor is not None:
            out.append(self.state.anchor)
        out.append(Base(-1, self.initial_sha256, None))
        return sorted([b for b in out if b.round < q], key=lambda b: -b.round)

    def __call__(self, q: int) -> None:
        """Verify round q by recomputation, and repair if this peer's weights or history were wrong."""
        initial: dict = {}  # the initial weights, rebuilt at most once per repair and dropped after it
        try:
            self._verify_or_repair(q, initial)
        finally:
            initial.clear()

    def _load(self, base: Base, initial: dict) -> None:
        if base.tensors is None:  # the initial weights: rebuilt exactly as at join
            if not initial:
                initial.update(self.initial_weights())
            tensors = initial
        elif isinstance(base.tensors, dict):
            tensors = base.tensors
        else:
            tensors = load_file(str(base.tensors))
        install_state(
            dict(tensors), self.state.replica.state_tensors(), base.sha256, f"base state of round {base.round}"
        )

    def _recompute(self, base: Base, lines: list[bytes], initial: dict) -> str:
        """Load ``base`` and apply these seed-log entries (consecutive rounds after it) to the live
        replica; returns the resulting hash."""
        self._load(base, initial)
        self.applier.recompute(lines, base.round + 1, rehash=False)
        self.stats["recomputations"] += 1
        return self.state.replica.sha256()

    def _genuine(self, line: bytes) -> bool:
        """Every record of this entry is one the DHT holds for its round (catchup.genuine_entry)."""
        return genuine_entry(self.client, self.policy, line)

    def _verify_or_repair(self, q: int, initial: dict) -> None:
        st, seedlog = self.state, self.state.seedlog
        try:
            votes = self.voting.votes(q)
        except (
            DHTUnavailable
        ) as e:  # nothing changed yet; a failed read must not stop the peer, the next disagreement tries again
            self.stats["repair_failed"] += 1
            log.error(
                "[%s] round=%d repair of round %d postponed: the votes could not be read (%s)",
                self.tag,
                st.applied,
                q,
                e,
            )
            return
        majority = agreed_hash([h.sha256 for h in votes.values()])
        before = st.applied
        own_hash = st.hashes.get(q)
        if not majority or majority == own_hash:
            return
        bases = [b for b in self.bases(q) if all(seedlog.get(r) is not None for r in range(b.round + 1, before + 1))]
        if not bases:
            self.stats["repair_failed"] += 1
            log.error(
                "[%s] round=%d cannot verify round %d: no base state with a complete own log", self.tag, st.applied, q
            )
            return
        base = bases[0]
        own = [seedlog.get(r) for r in range(base.round + 1, q + 1)]
        later = [seedlog.get(r) for r in range(q + 1, before + 1)]
        log.warning(
            "[%s] round=%d verifying round %d by recomputation from round %d (own hash %s, agreed %s)",
            self.tag,
            st.applied,
            q,
            base.round,
            (own_hash or "?")[:12],
            majority[:12],
        )
        t0 = time.time()
        mine = self._recompute(base, own, initial)
        if mine == majority:
            st.hashes[q] = mine
            self.applier.recompute(later, q + 1, rehash=True)
            self._repaired(q, majority, "own log: the live weights had been damaged", t0)
            return
        trusted = {p for p, h in votes.items() if h.sha256 == majority} - {self.peer_id}
        sources, _ = self.catchup.sources(trusted)
        # from the newest base, then from the oldest (the histories may have parted before the newest:
        # a partition both of whose halves confirmed their own states)
        for start in [base] + ([bases[-1]] if bases[-1] is not base else []):
            if self._adopt(q, majority, start, sources, initial, t0):
                return  # the normal loop applies the rounds after q
        self._load(base, initial)  # back to the state this peer's own log gives
        self.applier.recompute(own, base.round + 1, rehash=True)
        if mine == own_hash:  # confirmed by recomputation: a base for the next dispute
            st.verified.add((q, mine))
            if not any(b.round == q for b in self.bases(q + 1)):  # no checkpoint file of q: keep the state itself
                st.anchor = Base(q, mine, st.snapshot())
        self.applier.recompute(later, q + 1, rehash=True)
        self.stats["repairs_refused"] += 1
        self.voting.rechecks.pop(q, None)
        log.error(
            "[%s] round=%d kept its state: the hash %s claimed for round %d by %d key(s) is not reproducible "
            "from signed records "
            "(own log reproduces %s)",
            self.tag,
            st.applied,
            majority[:12],
            q,
            len(trusted),
            mine[:12],
        )

    def _adopt(self, q: int, majority: str, start: Base, sources, initial: dict, t0: float) -> bool:
        """Try each source's log from ``start`` to q; adopt the first that reproduces ``majority``."""
        st = self.state
        mine_from = [st.seedlog.get(r) for r in range(start.round + 1, q + 1)]
        for src in sources:
            if not src.log or src.log[0] > start.round + 1 or src.log[1] < q:
                continue
            try:
                theirs = self.catchup.transfer.fetch_log(src.p2p_id, start.round + 1, q)
                merged = []
                for r, line in zip(range(start.round + 1, q + 1), theirs, strict=True):
                    if parse_line(line)[0] != r:
                        raise SeedLogError(f"entry for round {parse_line(line)[0]} where round {r} was due")
                    if line != mine_from[r - start.round - 1] and not self._genuine(line):
                        raise SeedLogError(f"its entry for round {r} holds records the DHT does not")
                    merged.append(line)
                if self._recompute(start, merged, initial) != majority:
                    raise SeedLogError(f"its log from round {start.round + 1} does not reproduce the agreed hash")
            except (TransferError, SeedLogError, DHTUnavailable, ValueError) as e:
                log.warning("[%s] round=%d log of %s not adopted: %s", self.tag, st.applied, src.peer_id[:8], e)
                continue
            for line in merged:
                st.seedlog.put_line(line)
            st.verified = {v for v in st.verified if v[0] <= start.round}
            if st.anchor is not None and st.anchor.round > start.round:
                st.anchor = None
            st.jumped_to(q, majority)
            self.voting.forget_after(q)
            self._repaired(
                q,
                majority,
                f"log of {src.peer_id[:8]} from round {start.round + 1}, differing entries checked against the DHT",
                t0,
            )
            return True
        return False

    def _repaired(self, q: int, sha: str, how: str, t0: float) -> None:
        self.stats["repairs"] += 1
        self.voting.rechecks.clear()  # votes lost before the repair compared the weights it replaced
        self.metrics.on_repair()
        self.state.verified.add((q, sha))
        log.warning(
            "[%s] round=%d repaired by recomputation (%s) in %.2fs", self.tag, self.state.applied, how, time.time() - t0
        )
