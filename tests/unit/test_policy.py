"""The round policy: what the manifest says, every way a peer reaches a round's set agrees on."""

from __future__ import annotations

from onebyte.coordinator_free.agreement import decide_round
from onebyte.coordinator_free.manifest import RunManifest
from onebyte.coordinator_free.policy import RoundPolicy
from onebyte.coordinator_free.seedlog import entry_line
from onebyte.dht.records import ContributionRecord
from onebyte.zo.codec import make_codec

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def manifest(**over) -> RunManifest:
    fields = dict(
        run_id="policy",
        created_at=0.0,
        start_time=100.0,
        round_seconds=10.0,
        publish_margin=1.5,
        settle_seconds=3.0,
        hash_every=6,
        model="tiny-llama",
        initial_sha256="00" * 32,
        dataset="drugreview",
        max_length=32,
        lr=1e-3,
        eps=1e-3,
        weight_decay=0.0,
        table_log2=20,
        contribs_per_round=2,
    )
    return RunManifest(**(fields | over))


def records(round_: int) -> dict[str, ContributionRecord]:
    close = 100.0 + (round_ + 1) * 10.0
    return {
        A: ContributionRecord(round=round_, published_at=close - 2, codes=b"\x05\x86"),
        B: ContributionRecord(round=round_, published_at=close - 1, codes=b"\x7f"),
        C: ContributionRecord(round=round_, published_at=close + 0.5, codes=b"\x01"),
    }  # late


def test_policy_decides_as_the_manifest_says_and_replays_its_own_log_entry_to_the_same_set():
    m = manifest(allowed_peers=[A, C], max_round_contributions=8, clip_median=2.0)
    policy = RoundPolicy.from_manifest(m)
    assert policy.clock.close(3) == 140.0 and policy.clock.publish_by(3) == 138.5 and policy.clock.final_at(3) == 143.0
    rs = policy.decide(3, records(3))
    same = decide_round(
        m.run_id,
        3,
        records(3),
        close_time=140.0,
        contribs_per_round=2,
        codec=make_codec(m.codec),
        allowed={A, C},
        rule=m.rule,
    )
    assert (rs.contributions, rs.counts, rs.digest) == (same.contributions, same.counts, same.digest)
    assert rs.counts == {A: 2} and rs.rejected == {"not_allowed": 1, "late": 1}  # B not a member, C late
    replayed = policy.replay(entry_line(rs.round, rs.digest, rs.records))
    assert (replayed.round, replayed.contributions, replayed.digest) == (3, rs.contributions, rs.digest)
    assert policy.counts(A) and not policy.counts(B)


def test_a_public_runs_policy_counts_every_key():
    policy = RoundPolicy.from_manifest(manifest())
    assert policy.allowed is None and policy.counts(B)
    assert policy.decide(0, records(0)).counts == {A: 2, B: 1}
