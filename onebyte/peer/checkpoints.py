"""A peer's checkpoint directory: periodic checkpoints, their rotation, and the restart from them.

Files are written atomically (onebyte.peer.checkpoint) at hash rounds, at most one per
``every_seconds``; the newest is what this peer serves to joiners. On a restart the newest
intact one is loaded and this peer's own seed log replays the rounds after it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from onebyte.coordinator_free.manifest import RunManifest
from onebyte.coordinator_free.seedlog import SeedLogError
from onebyte.metrics.peer import PeerMetrics
from onebyte.peer.applier import RoundApplier
from onebyte.peer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from onebyte.peer.state import Base, ReplicaState

log = logging.getLogger("onebyte.peer")

KEEP_CHECKPOINTS = 2


class CheckpointDir:
    def __init__(
        self,
        folder: Path | None,
        manifest: RunManifest,
        state: ReplicaState,
        *,
        every_seconds: float,
        tag: str,
        stats: Counter,
        metrics: PeerMetrics,
    ):
        self.folder, self.state, self.every_seconds, self.tag = folder, state, every_seconds, tag
        self.meta = {"run_id": manifest.run_id, "initial_sha256": manifest.initial_sha256}
        self.stats, self.metrics = stats, metrics
        self.newest: tuple[Path, int, str] | None = None  # (path, round, sha256): what this peer serves
        self.written_at = 0.0

    def files(self) -> list[Path]:
        """This run's checkpoint files, newest first."""
        return sorted(self.folder.glob("ckpt-*.safetensors"), reverse=True) if self.folder else []

    def maybe_save(self, q: int, sha: str) -> None:
        """At a hash round: write a checkpoint if the last one is older than ``every_seconds``."""
        if not self.folder or time.time() - self.written_at < self.every_seconds:
            return
        t0 = time.perf_counter()
        path = self.folder / f"ckpt-{q:09d}.safetensors"
        try:
            info = save_checkpoint(path, self.state.replica.state_tensors(), q, self.meta)
        except OSError as e:
            log.error("[%s] round=%d checkpoint not written: %s", self.tag, q, e)
            return
        assert info.sha256 == sha
        self.newest, self.written_at = (path, q, sha), time.time()
        for old in self.files()[KEEP_CHECKPOINTS:]:
            old.unlink(missing_ok=True)
        self.metrics.on_checkpoint()
        log.info("[%s] round=%d checkpoint %s written in %.2fs", self.tag, q, path.name, time.perf_counter() - t0)

    def resume(self, applier: RoundApplier) -> None:
        """Restart: load the newest intact checkpoint of this run, then replay this peer's own log
        up to the newest final round."""
        st = self.state
        for path in self.files():
            try:
                info = load_checkpoint(path, st.replica.state_tensors(), self.meta)
            except CheckpointError as e:
                self.stats["checkpoints_rejected"] += 1
                aside = path.with_name(path.name + ".refused")  # kept for inspection, out of rotation and serving
                path.replace(aside)
                log.warning(
                    "[%s] round=%d not resuming from %s (moved to %s): %s",
                    self.tag,
                    st.applied,
                    path.name,
                    aside.name,
                    e,
                )
                continue
            st.applied, st.hashes[info.round] = info.round, info.sha256
            self.newest, self.written_at = (path, info.round, info.sha256), time.time()
            st.verified.add((info.round, info.sha256))  # the state this peer resumes from is its base
            break
        first = st.applied + 1
        while (
            line := st.seedlog.get(st.applied + 1)
        ) is not None and st.applied + 1 <= applier.policy.clock.last_final(time.time()):
            try:
                applier.replay(line)
            except SeedLogError as e:
                log.warning("[%s] round=%d own seed log unusable from here: %s", self.tag, st.applied + 1, e)
                break
        if st.applied >= 0:
            log.info(
                "[%s] round=%d resumed from %s and replayed own log rounds %d..%d",
                self.tag,
                st.applied,
                self.newest[0].name if self.newest else "the initial weights",
                first,
                st.applied,
            )

    def confirmed_bases(self) -> list[Base]:
        """Own checkpoint files whose state the swarm or a recomputation confirmed (repair bases)."""
        out = []
        for path in self.files():
            r = int(path.stem.split("-")[1])
            out += [Base(r, sha, path) for (vr, sha) in self.state.verified if vr == r]
        return out
