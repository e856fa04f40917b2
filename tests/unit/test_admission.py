"""Admission and influence: private-run allowlists, non-finite codes, and the extreme-byte monitor."""

from __future__ import annotations

from onebyte.coordinator_free.agreement import decide_round
from onebyte.dht.records import ContributionRecord
from onebyte.zo.codec import make_codec

CODEC = make_codec("log8:-8:8")
A, B = "aa" * 32, "bb" * 32


def test_private_run_counts_only_allowed_keys_and_float32_rejects_non_finite():
    recs = {
        A: ContributionRecord(round=1, published_at=1.0, codes=b"\x05"),
        B: ContributionRecord(round=1, published_at=1.0, codes=b"\x06"),
    }
    rs = decide_round("run", 1, recs, close_time=10.0, contribs_per_round=4, codec=CODEC, allowed={A})
    assert rs.counts == {A: 1} and rs.rejected == {"not_allowed": 1}
    import struct

    f32 = make_codec("float32")
    bad = {
        A: ContributionRecord(round=1, published_at=1.0, codes=struct.pack("<2f", 1.0, float("nan"))),
        B: ContributionRecord(round=1, published_at=1.0, codes=struct.pack("<f", float("inf"))),
    }
    rs = decide_round("run", 1, bad, close_time=10.0, contribs_per_round=4, codec=f32)
    assert rs.contributions == [] and rs.rejected == {"malformed": 2}


def test_influence_monitor_flags_a_peer_that_always_sends_the_extreme_byte():
    import numpy as np

    from onebyte.coordinator_free.influence import InfluenceMonitor

    rng = np.random.default_rng(0)
    honest = [f"{i:064x}" for i in range(1, 5)]
    attacker = "ff" * 32
    mon = InfluenceMonitor(CODEC)
    top = CODEC.encode(CODEC.max_value)
    for r in range(20):
        recs = {
            p: ContributionRecord(
                round=r, published_at=0.0, codes=bytes(CODEC.encode(float(g)) for g in rng.standard_normal(4))
            )
            for p in honest
        }
        recs[attacker] = ContributionRecord(round=r, published_at=0.0, codes=bytes([top] * 4))
        mon.observe(decide_round("run", r, recs, close_time=10.0, contribs_per_round=4, codec=CODEC))
    suspects = mon.suspects()
    assert [s.peer_id for s in suspects] == [attacker] and suspects[0].saturated_share == 1.0
    # its share of any round is still bounded: K codes of at most g_max each
    assert CODEC.decode(top) == CODEC.max_value


def test_hash_agreement_breaks_ties_the_same_way_everywhere():
    from onebyte.coordinator_free.agreement import agreed_hash, compare_hashes

    lo, hi = "1" * 64, "f" * 64
    assert agreed_hash([hi, lo, hi]) == hi and agreed_hash([]) is None
    assert agreed_hash([hi, lo]) is None  # two voters disagreeing decide nothing (a vote may be late)
    assert compare_hashes(5, hi, {"a": lo}).majority_sha256 is None
    # a 2|2 split after a partition: the half holding the larger hash repairs, the other stays
    assert not compare_hashes(5, hi, {"a": lo, "b": lo, "c": hi}).mine_in_majority
    assert compare_hashes(5, lo, {"a": hi, "b": hi, "c": lo}).mine_in_majority
