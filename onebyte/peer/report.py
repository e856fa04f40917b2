"""What a peer tells about its run: the round log as it goes, and one report at the end.

Both observe; neither steers. The round log is best effort (a full disk stops the log, not the
peer); the report is written atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from onebyte import __version__
from onebyte.peer.train import write_json_atomic

log = logging.getLogger("onebyte.peer")


class RoundLog:
    """One JSON line per event (applied, eval, catchup) for plots and tests (``--round-log``)."""

    def __init__(self, path: str | None, tag: str):
        self.path, self.tag = path, tag

    def write(self, event: dict) -> None:
        if not self.path:
            return
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(event) + "\n")
        except OSError as e:
            log.warning(
                "[%s] round=%d cannot write the round log %s (%s); no more round-log lines",
                self.tag,
                event.get("round", -1),
                self.path,
                e.strerror or e,
            )
            self.path = None


class PeerReport(BaseModel):
    """The run's summary as ``--report`` writes it: what tests, plots, benchmarks and operators read."""

    peer_id: str
    run_id: str
    run_creator: str
    onebyte_version: str = __version__
    protocol_version: int
    interrupted: bool
    rounds_applied: int
    last_round: int
    contributions_made: int
    contributions_published: int
    contributions_applied_local: int
    contributions_applied_remote: int
    missed_deadline: int
    own_records_not_counted: int = 0  # rounds in which the round rule left this peer's own on-time record out
    skipped_nonfinite: int
    hash_agreements: int
    hash_mismatches: int
    repairs: int
    repairs_failed: int
    catchups: dict[str, int]  # {"log": n, "checkpoint": n}
    checkpoints_rejected: int  # own checkpoint files found damaged at a restart
    checkpoints_refused: int  # other peers' checkpoint offers refused before or after download
    repairs_refused: int  # lost votes whose majority hash was not reproducible: the state was kept
    recomputations: int
    votes_ignored: int  # hash votes of keys that did not contribute lately (checkpoint admission)
    suspects: dict[str, dict]  # peers the influence monitor flagged
    rejected: dict[str, int]  # rejected records by reason, all stages together
    rejected_by_stage: dict[str, dict[str, int]]  # round (the round rule), parse (records), validator (the DHT's)
    final_sha256: str
    hashes: dict[str, str]  # hash round -> own weight hash
    agreement: dict[str, dict]  # hash round -> the outcome of its vote
    eval_before: dict | None
    eval_after: dict | None
    eval_curve: list[dict]  # --eval-every: scores on a fixed held-out subset as the run went
    seconds: float
    # wall time spent making contributions (estimates, encoding), and its share of ``seconds``: the rest
    # is waiting for rounds to settle, applying, hashing, evaluating, catching up
    contributing_seconds: float
    contributing_fraction: float | None
    manifest: dict
    mean_train_loss: float | None

    @classmethod
    def of(
        cls,
        *,
        peer_id: str,
        manifest,
        run_creator: str,
        interrupted: bool,
        applied: int,
        stats: Counter,
        rejected_by_stage: dict[str, Counter],
        suspects: dict,
        final_sha256: str,
        hashes: dict[int, str],
        agreement: dict[int, dict],
        before: dict | None,
        after: dict | None,
        curve: list[dict],
        seconds: float,
    ) -> PeerReport:
        s = stats
        return cls(
            peer_id=peer_id,
            run_id=manifest.run_id,
            run_creator=run_creator,
            protocol_version=manifest.protocol_version,
            interrupted=interrupted,
            rounds_applied=s["rounds_applied"],
            last_round=applied,
            contributions_made=s["made"],
            contributions_published=s["published"],
            contributions_applied_local=s["applied_local"],
            contributions_applied_remote=s["applied_remote"],
            missed_deadline=s["missed_deadline"],
            own_records_not_counted=s["own_record_not_counted"],
            skipped_nonfinite=s["skipped_nonfinite"],
            hash_agreements=s["hash_agreements"],
            hash_mismatches=s["hash_mismatches"],
            repairs=s["repairs"],
            repairs_failed=s["repair_failed"],
            catchups={"log": s["catchups_log"], "checkpoint": s["catchups_checkpoint"]},
            checkpoints_rejected=s["checkpoints_rejected"],
            checkpoints_refused=s["checkpoints_refused"],
            repairs_refused=s["repairs_refused"],
            recomputations=s["recomputations"],
            votes_ignored=s["votes_ignored"],
            suspects=suspects,
            rejected=dict(sum(rejected_by_stage.values(), Counter())),
            rejected_by_stage={k: dict(v) for k, v in rejected_by_stage.items()},
            final_sha256=final_sha256,
            hashes={str(k): v for k, v in sorted(hashes.items())},
            agreement={str(k): v for k, v in agreement.items()},
            eval_before=before,
            eval_after=after,
            eval_curve=curve,
            seconds=seconds,
            contributing_seconds=s["contributing_seconds"],
            contributing_fraction=s["contributing_seconds"] / seconds if seconds > 0 else None,
            manifest=manifest.model_dump(),
            mean_train_loss=s["loss_sum"] / s["made"] if s["made"] else None,
        )


def write_report(path: str | None, report: PeerReport) -> None:
    if path:
        write_json_atomic(path, report.model_dump())
