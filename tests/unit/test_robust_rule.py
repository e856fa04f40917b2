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
