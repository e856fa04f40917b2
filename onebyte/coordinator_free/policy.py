"""A run's round policy: built once from the manifest, it decides live rounds and replays logged ones.

Every way a peer reaches a round's set goes through it, so the live loop, a restart, a catch-up
from another peer's log and a repair by recomputation cannot drift apart: the same run id,
contributions per round, codec, allow-list and robust rule (docs/PROTOCOL.md §12, §14, §15).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from onebyte.coordinator_free.agreement import RobustRule, RoundSet, decide_round
from onebyte.coordinator_free.manifest import RunManifest
from onebyte.coordinator_free.rounds import RoundClock
from onebyte.coordinator_free.seedlog import replay_set
from onebyte.dht.records import ContributionRecord
from onebyte.zo.codec import ByteCodec, Float32Codec, make_codec


@dataclass(frozen=True)
class RoundPolicy:
    run_id: str
    contribs_per_round: int
    codec: ByteCodec | Float32Codec
    rule: RobustRule
    clock: RoundClock
    allowed: frozenset[str] | None = None  # a private run's members; None: anyone may contribute

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

    def decide(self, round_: int, records: Mapping[str, ContributionRecord]) -> RoundSet:
        """Round ``round_``'s set from the signed records read for it (§12)."""
        return decide_round(
            self.run_id,
            round_,
            records,
            close_time=self.clock.close(round_),
            contribs_per_round=self.contribs_per_round,
            codec=self.codec,
            allowed=self.allowed,
            rule=self.rule,
        )

    def replay(self, line: bytes) -> RoundSet:
        """A round's set from a seed-log entry (§14); raises SeedLogError if the entry is malformed."""
        return replay_set(
            self.run_id, line, contribs_per_round=self.contribs_per_round, codec=self.codec, rule=self.rule
        )

    def counts(self, peer_id: str) -> bool:
        """Whether this key's records can count in this run (a private run counts only its members)."""
        return self.allowed is None or peer_id in self.allowed
