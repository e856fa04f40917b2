"""Verify, don't count (issue 13) without a network: PROTOCOL §15's robust rule on a round set, and
the influence monitor flagging a flood of new keys. The attacks in a live swarm: tests/adversaries/test_verify.py."""

from __future__ import annotations


def test_robust_rule_caps_and_clips_the_same_way_everywhere_and_v1_is_unchanged():
    """PROTOCOL §15's robust rule on a round set (no network): unset = v1 bit for bit; the cap keeps
    records by their hash rank while they fit; the clip is min(A, m * median); a seed-log replay
    applies the same rule and reproduces the digest."""
    import hashlib
    import struct

    from onebyte.coordinator_free.agreement import RobustRule, cap_rank, decide_round
    from onebyte.coordinator_free.seedlog import entry_line, replay_set
    from onebyte.dht.records import ContributionRecord
    from onebyte.zo.codec import make_codec

    codec = make_codec("log8:-8:8")
    top = codec.encode(codec.max_value)
    keys = [hashlib.sha256(bytes([i])).hexdigest() for i in range(10)]
    recs = {
        k: ContributionRecord(round=3, published_at=0.0, codes=bytes([0x41, 0x49] if i < 4 else [top, top]))
        for i, k in enumerate(keys)
    }
    v1 = decide_round("run", 3, recs, close_time=1.0, contribs_per_round=2, codec=codec)
    same = decide_round("run", 3, recs, close_time=1.0, contribs_per_round=2, codec=codec, rule=RobustRule())
    assert (v1.contributions, v1.digest) == (same.contributions, same.digest) and len(v1.contributions) == 20
    capped = decide_round(
        "run",
        3,
        recs,
        close_time=1.0,
        contribs_per_round=2,
        codec=codec,
        rule=RobustRule(max_contributions=7, clip_abs=4.0),
    )
    kept = sorted(keys, key=lambda k: cap_rank(3, k))[:3]  # 2 codes each: 3 records fit in 7
    assert (
        sorted(capped.counts) == sorted(kept)
        and capped.rejected == {"over_round_cap": 7}
        and len(capped.contributions) == 6
    )
    assert [p for p, _ in capped.records] == sorted(kept)  # still canonical order
    assert max(abs(v) for _, v in capped.contributions) <= 4.0
    # the digest covers the kept records only; a replay through the same rule reproduces it
    again = replay_set(
        "run",
        entry_line(3, capped.digest, capped.records),
        contribs_per_round=2,
        codec=codec,
        rule=RobustRule(max_contributions=7, clip_abs=4.0),
    )
    assert (again.contributions, again.digest) == (capped.contributions, capped.digest)
    # median clip: 8 of the 20 codes are 1.0 or 2.0, 12 saturated: the median (10th smallest |g|) is g_max
    med = decide_round(
        "run", 3, recs, close_time=1.0, contribs_per_round=2, codec=codec, rule=RobustRule(clip_median=0.5)
    )
    assert max(abs(v) for _, v in med.contributions) == 0.5 * codec.max_value
    assert struct.pack("<d", med.contributions[0][1]) == struct.pack(
        "<d", v1.contributions[0][1]
    )  # below the limit: unchanged


def test_a_flood_of_new_keys_sending_saturated_codes_is_flagged():
    """Per-key comparisons miss a flood (the fresh keys are most of the round): a round in which at
    least 8 keys appear for the first time with mostly saturated codes flags all of them, and only them."""
    import numpy as np

    from onebyte.coordinator_free.agreement import decide_round
    from onebyte.coordinator_free.influence import InfluenceMonitor
    from onebyte.dht.records import ContributionRecord
    from onebyte.zo.codec import make_codec

    codec = make_codec("log8:-8:8")
    top = codec.encode(codec.max_value)
    rng = np.random.default_rng(0)
    honest = [f"{i:064x}" for i in range(1, 4)]
    sybils = [f"{1000 + i:064x}" for i in range(64)]
    mon = InfluenceMonitor(codec)
    for r in range(12):
        recs = {
            p: ContributionRecord(
                round=r, published_at=0.0, codes=bytes(codec.encode(float(g)) for g in rng.standard_normal(2))
            )
            for p in honest
        }
        if r == 8:
            recs |= {p: ContributionRecord(round=r, published_at=0.0, codes=bytes([top, top])) for p in sybils}
        mon.observe(decide_round("run", r, recs, close_time=10.0, contribs_per_round=2, codec=codec))
    flagged = {s.peer_id for s in mon.suspects()}
    assert flagged == set(sybils)


def _entry(round_, records, codec, rule):
    """A round's seed-log entry, decided by the rule (as a peer logs it)."""
    from onebyte.coordinator_free.agreement import decide_round
    from onebyte.coordinator_free.seedlog import entry_line
    from onebyte.dht.records import ContributionRecord

    recs = {p: ContributionRecord(round=round_, published_at=0.0, codes=c) for p, c in records.items()}
    rs = decide_round("run", round_, recs, close_time=1.0, contribs_per_round=4, codec=codec, rule=rule)
    return entry_line(round_, rs.digest, rs.records)


def test_a_flood_of_fresh_keys_leaves_established_keys_and_an_honest_newcomer_their_place():
    """PROTOCOL §15, admission by seniority: 3 keys that counted in the window, 1,000 fresh keys
    sending saturated codes, one honest newcomer. The cap keeps every established key, the honest
    newcomer before the flood, and at most max_new_contributions from keys without seniority; a key
    whose codes were mostly clipped gains none; a replay of the logged set reproduces its digest."""
    import hashlib

    from onebyte.coordinator_free.agreement import RobustRule
    from onebyte.coordinator_free.policy import RoundPolicy
    from onebyte.coordinator_free.rounds import RoundClock
    from onebyte.coordinator_free.seniority import standing
    from onebyte.dht.records import ContributionRecord
    from onebyte.zo.codec import make_codec

    codec = make_codec("log8:-8:8")
    top = codec.encode(codec.max_value)
    plain = bytes([0x41, 0x49, 0xC1, 0x45])  # |g| 1 to 2
    rule = RobustRule(max_contributions=32, clip_abs=4.0, seniority_window=4, max_new_contributions=8)
    policy = RoundPolicy("run", 4, codec, rule, RoundClock(0.0, 5.0, 1.0, 1.0))
    key = [hashlib.sha256(b"k%d" % i).hexdigest() for i in range(1005)]
    honest, newcomer, clipped, flood = key[:3], key[3], key[4], key[5:]
    log = {}
    for q in range(4):  # the honest keys count in every round; `clipped` sends saturated codes in each
        log[q] = _entry(q, {**{p: plain for p in honest}, clipped: bytes([top] * 4)}, codec, rule)
        assert standing(log[q], codec, rule) == set(honest)
    assert policy.seniority.at(4, log.get) == ({p: 4 for p in honest}, 0)
    records = {p: ContributionRecord(round=4, published_at=0.0, codes=bytes([top] * 4)) for p in [*flood, clipped]}
    records |= {p: ContributionRecord(round=4, published_at=0.0, codes=plain) for p in [*honest, newcomer]}
    rs = policy.decide(4, records, log.get)
    kept = set(rs.counts)
    assert set(honest) | {newcomer} <= kept and len(rs.contributions) == 12 + 8
    assert len(kept & {*flood, clipped}) == 1  # 8 new contributions: the newcomer's 4 and one flood key's 4
    assert rs.rejected == {"new_key_limit": len(flood)}
    assert max(abs(v) for _, v in rs.contributions) <= 4.0
    again = policy.replay(_entry(4, {p: records[p].codes for p in kept}, codec, RobustRule(32, 4.0)))
    assert again.digest == rs.digest and again.contributions == rs.contributions
    # without the window (a peer that lacks the log) every key is new: another set, which the hash vote catches
    assert set(policy.decide(4, records).counts) != kept
    # v1's cap of the same size, by hash rank alone, keeps a few flood keys and drops established ones
    v1cap = RoundPolicy("run", 4, codec, RobustRule(32, 4.0), RoundClock(0.0, 5.0, 1.0, 1.0)).decide(4, records)
    assert not set(honest) <= set(v1cap.counts)


def test_admission_by_seniority_is_a_manifest_setting_an_older_peer_refuses_in_one_line():
    """The fields go together and need the cap; a peer that does not know a manifest field says so."""
    import pytest
    from pydantic import ValidationError

    from onebyte.coordinator_free.manifest import RunManifest, unsupported_reason
    from tests.unit.test_policy import manifest

    m = manifest(max_round_contributions=64, seniority_window=32, max_new_contributions=4)
    assert m.rule.by_seniority and m.record()["seniority_window"] == 32
    assert "seniority_window" not in manifest().record()
    for bad in (
        dict(seniority_window=32),
        dict(seniority_window=32, max_new_contributions=4),
        dict(max_round_contributions=64, seniority_window=32, max_new_contributions=1),
    ):
        with pytest.raises(ValidationError):
            manifest(**bad)
    raw = m.record() | {"proof_of_work_bits": 20}
    assert "'proof_of_work_bits'" in unsupported_reason(raw)
    assert unsupported_reason(m.record()) is None
    assert RunManifest(**m.record()) == m
