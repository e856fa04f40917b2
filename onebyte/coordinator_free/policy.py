"""A run's round policy: built once from the manifest, it decides live rounds and replays logged ones.

Every way a peer reaches a round's set goes through it, so the live loop, a restart, a catch-up
from another peer's log and a repair by recomputation cannot drift apart: the same run id,
contributions per round, codec, allow-list and robust rule (docs/PROTOCOL.md §12, §14, §15).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from onebyte.coordinator_free.agreement import RobustRule, RoundSet, decide_round
from onebyte.coordinator_free.manifest import RunManifest
from onebyte.coordinator_free.rounds import RoundClock
from onebyte.coordinator_free.seedlog import replay_set
from onebyte.coordinator_free.seniority import History, SeniorityWindow
from onebyte.dht.records import ContributionRecord
from onebyte.zo.codec import ByteCodec, Float32Codec, make_codec

log = logging.getLogger("onebyte.policy")


@dataclass(frozen=True)
class RoundPolicy:
    run_id: str
    contribs_per_round: int
    codec: ByteCodec | Float32Codec
    rule: RobustRule
    clock: RoundClock
    allowed: frozenset[str] | None = None  # a private run's members; None: anyone may contribute
    seniority: SeniorityWindow | None = field(default=None, compare=False)  # a run that admits by seniority

    def __post_init__(self):
        if self.rule.by_seniority and self.seniority is None:
            object.__setattr__(self, "seniority", SeniorityWindow(self.rule, self.codec))

    @classmethod
    def from_manifest(cls, m: RunManifest) -> RoundPolicy:
        return cls(
            run_id=m.run_id,
            contribs_per_round=m.contribs_per_round,
            codec=make_codec(m.codec),
            rule=m.rule,
            clock=RoundClock.of(m),
            allowed=frozenset(m.allowed_peers) if m.allowed_peers is not None else None,
        )

    def decide(
        self,
        round_: int,
        records: Mapping[str, ContributionRecord],
        history: History | None = None,
        *,
        quiet: bool = False,
    ) -> RoundSet:
        """Round ``round_``'s set from the signed records read for it (§12); in a run that admits by
        seniority (§15), ``history`` (this peer's seed log) gives each key's. Unless ``quiet``, a
        capped round decided without the whole window is logged."""
        seniority = None
        if self.seniority is not None:
            seniority, missing = self.seniority.at(round_, history or (lambda q: None))
        rs = decide_round(
            self.run_id,
            round_,
            records,
            close_time=self.clock.close(round_),
            contribs_per_round=self.contribs_per_round,
            codec=self.codec,
            allowed=self.allowed,
            rule=self.rule,
            seniority=seniority,
        )
        capped = rs.rejected["new_key_limit"] or rs.rejected["over_round_cap"]
        if seniority is not None and missing and capped and not quiet:
            log.warning(
                "round=%d decided by seniority with %d of the %d rounds before it missing from the seed log: "
                "other peers may keep other records (a hash disagreement repairs it, §14)",
                round_,
                missing,
                self.rule.seniority_window,
            )
        return rs

    def replay(self, line: bytes) -> RoundSet:
        """A round's set from a seed-log entry (§14); raises SeedLogError if the entry is malformed."""
        return replay_set(
            self.run_id, line, contribs_per_round=self.contribs_per_round, codec=self.codec, rule=self.rule
        )

    def counts(self, peer_id: str) -> bool:
        """Whether this key's records can count in this run (a private run counts only its members)."""
        return self.allowed is None or peer_id in self.allowed
