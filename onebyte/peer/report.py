"""What a peer tells about its run: the round log as it goes, and one report at the end.

Both observe; neither steers. The round log is best effort (a full disk stops the log, not the
peer); the report is written atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

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
            log.warning("[%s] round=%d cannot write the round log %s (%s); no more round-log lines", self.tag,
                        event.get("round", -1), self.path, e.strerror or e)
            self.path = None


def peer_report(*, peer_id: str, manifest, run_creator: str, interrupted: bool, applied: int, stats: Counter,
                rejected_by_stage: dict[str, Counter], suspects: dict, final_sha256: str, hashes: dict[int, str],
                agreement: dict[int, dict], before: dict | None, after: dict | None, curve: list[dict], seconds: float) -> dict:
    """The run's summary as ``--report`` writes it (the keys tests, plots and operators read)."""
    s = stats
    return {
        "peer_id": peer_id, "run_id": manifest.run_id, "run_creator": run_creator, "onebyte_version": __version__,
        "protocol_version": manifest.protocol_version,
        "interrupted": interrupted, "rounds_applied": s["rounds_applied"], "last_round": applied,
        "contributions_made": s["made"], "contributions_published": s["published"],
        "contributions_applied_local": s["applied_local"], "contributions_applied_remote": s["applied_remote"],
        "missed_deadline": s["missed_deadline"], "skipped_nonfinite": s["skipped_nonfinite"],
        "hash_agreements": s["hash_agreements"], "hash_mismatches": s["hash_mismatches"],
        "repairs": s["repairs"], "repairs_failed": s["repair_failed"],
        "catchups": {"log": s["catchups_log"], "checkpoint": s["catchups_checkpoint"]},
        "checkpoints_rejected": s["checkpoints_rejected"], "checkpoints_refused": s["checkpoints_refused"],
        "repairs_refused": s["repairs_refused"], "recomputations": s["recomputations"],
        "votes_ignored": s["votes_ignored"], "suspects": suspects,
        "rejected": dict(sum(rejected_by_stage.values(), Counter())),
        "rejected_by_stage": {k: dict(v) for k, v in rejected_by_stage.items()},
        "final_sha256": final_sha256, "hashes": {str(k): v for k, v in sorted(hashes.items())},
        "agreement": {str(k): v for k, v in agreement.items()},
        "eval_before": before, "eval_after": after, "eval_curve": curve, "seconds": seconds, "manifest": manifest.model_dump(),
        "mean_train_loss": s["loss_sum"] / s["made"] if s["made"] else None,
    }


def write_report(path: str | None, report: dict) -> None:
    if path:
        write_json_atomic(path, report)
