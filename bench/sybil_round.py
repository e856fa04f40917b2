"""A public run against 1,000 fresh keys, at SmolLM2-135M scale: what a flooded round costs every
honest peer, and how long until an honest newcomer's contributions count (issue 22).

Every round: 3 established honest keys with 4 contributions each (codes of honest size), one new
honest volunteer with 4, and 1,000 fresh Sybil keys with 4 contributions of the extreme byte. Each
round's set is decided by the real ``decide_round`` under today's rule (v1: every record), and
under §15's cap (``max_contributions`` 64, records taken in ``cap_rank`` order) with and without
its absolute clip; the kept contributions are applied by the real ``Replica.apply`` (sgd, dense
directions) to SmolLM2-135M's "norm + last MLP" shapes (2.66 M numbers, bench/v3_apply.py). It
reports the seconds to decide and apply a flooded round and an honest one, the share of rounds in
which each honest key is kept, and the rounds until the newcomer is first kept.

    python bench/sybil_round.py [--keys 1000] [--rounds 200] [--apply-rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import time

from _common import setup_torch
from v3_apply import make_replica

from harness import machine_info, median, table, write_results


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()  # 64 hex digits, the shape of a public key


def records_of(r: int, keys: int) -> dict:
    from onebyte.dht.records import ContributionRecord

    honest = bytes([0x58, 0xD8, 0x50, 0xD0])  # |g| around 2 (log8:-8:8), both signs
    out = {key(f"honest{i}"): ContributionRecord(round=r, published_at=0.0, codes=honest) for i in range(3)}
    out[key("newcomer")] = ContributionRecord(round=r, published_at=0.0, codes=honest)
    flood = bytes([0x7F] * 4)  # the extreme byte: g_max
    out.update({key(f"sybil{i}"): ContributionRecord(round=r, published_at=0.0, codes=flood) for i in range(keys)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=200, help="rounds over which keys' admission is counted")
    p.add_argument("--apply-rounds", type=int, default=3, help="rounds whose apply is timed (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    setup_torch(args.threads)
    from onebyte.coordinator_free.agreement import RobustRule, decide_round
    from onebyte.zo.codec import ByteCodec

    codec = ByteCodec()
    rules = {
        "v1 (every record)": RobustRule(),
        "cap 64": RobustRule(max_contributions=64),
        "cap 64, clip_abs 4": RobustRule(max_contributions=64, clip_abs=4.0),
    }
    honest_ids = [key(f"honest{i}") for i in range(3)]
    rows, results = [], []
    for label, rule in rules.items():
        kept_honest, first_newcomer, decide_s, n_kept = [0, 0, 0], None, [], []
        for r in range(args.rounds):
            recs = records_of(r, args.keys)
            t0 = time.perf_counter()
            rs = decide_round("sybil", r, recs, close_time=1.0, contribs_per_round=4, codec=codec, rule=rule)
            decide_s.append(time.perf_counter() - t0)
            n_kept.append(len(rs.contributions))
            for i, h in enumerate(honest_ids):
                kept_honest[i] += h in rs.counts
            if first_newcomer is None and key("newcomer") in rs.counts:
                first_newcomer = r
            if r == 0:
                first = rs
        rep = make_replica("sgd", "dense")
        apply_s = []
        for r in range(args.apply_rounds):
            rs = (
                first
                if r == 0
                else decide_round(
                    "sybil", r, records_of(r, args.keys), close_time=1.0, contribs_per_round=4, codec=codec, rule=rule
                )
            )
            t0 = time.perf_counter()
            rep.apply(rs.contributions)
            apply_s.append(time.perf_counter() - t0)
        honest_rs = decide_round(
            "sybil",
            0,
            {h: records_of(0, 0)[h] for h in honest_ids},
            close_time=1.0,
            contribs_per_round=4,
            codec=codec,
            rule=rule,
        )
        t0 = time.perf_counter()
        make_replica("sgd", "dense").apply(honest_rs.contributions)
        honest_apply = time.perf_counter() - t0
        res = {
            "rule": label,
            "keys": args.keys,
            "rounds": args.rounds,
            "contributions_kept_median": median(n_kept),
            "decide_seconds_median": median(decide_s),
            "apply_seconds_median": median(apply_s),
            "honest_round_apply_seconds": honest_apply,
            "honest_keys_kept_share": [k / args.rounds for k in kept_honest],
            "newcomer_first_kept_round": first_newcomer,
        }
        results.append(res)
        rows.append(
            [
                label,
                f"{res['contributions_kept_median']:,}",
                f"{res['decide_seconds_median']:.3f}",
                f"{res['apply_seconds_median']:.2f}",
                f"{honest_apply:.3f}",
                " / ".join(f"{x:.0%}" for x in res["honest_keys_kept_share"]),
                "never" if first_newcomer is None else str(first_newcomer),
            ]
        )
        print(rows[-1], flush=True)
    print(
        table(
            rows,
            [
                "rule",
                "kept per round",
                "decide s",
                "apply s (flooded)",
                "apply s (honest round)",
                "rounds each honest key kept",
                "newcomer first kept (round)",
            ],
        )
    )
    write_results("sybil_round", {"runs": results, "machine": machine_info(args.threads)}, args.out)


if __name__ == "__main__":
    main()
