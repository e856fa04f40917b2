"""A public run against 1,000 fresh keys, at SmolLM2-135M scale: what a flooded round costs every
honest peer, and how long until an honest newcomer's contributions count (issue 22).

Three established honest keys contribute 4 codes of honest size to every round. After --warmup
rounds of them alone, a new honest volunteer (4 codes) and 1,000 fresh Sybil keys (4 codes each)
join every round: the extreme byte, or codes of honest size (a flood the clip cannot tell apart).
Each round's set is decided by the real ``RoundPolicy.decide`` from the seed log kept so far, under
v1's rule (every record), §15's cap (``cap_rank`` order) with and without its clip, and §15's
admission by seniority; the first flooded rounds' kept contributions are applied by the real
``Replica.apply`` (sgd, dense directions) to SmolLM2-135M's "norm + last MLP" shapes (2.66 M
numbers, bench/v3_apply.py). It reports the seconds to apply a flooded round and an honest one,
the share of flooded rounds in which each established key is kept, the flooded rounds until the
newcomer is first kept, and a flooded round's pull against an honest round's (sqrt(sum v^2) / n).

    python bench/sybil_round.py [--keys 1000] [--rounds 600] [--warmup 20] [--apply-rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time

from _common import setup_torch
from tqdm import tqdm
from v3_apply import make_replica

from harness import machine_info, median, table, write_results


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()  # 64 hex digits, the shape of a public key


HONEST = bytes([0x58, 0xD8, 0x50, 0xD0])  # |g| around 2 (log8:-8:8), both signs
FLOODS = {"extreme": bytes([0x7F] * 4), "ordinary": HONEST}  # the extreme byte (g_max), or codes of honest size


def records_of(r: int, keys: int, flood: str, warmup: int) -> dict:
    """Round r's records: the 3 established keys in every round; from round ``warmup`` on, the
    newcomer and the flood too."""
    from onebyte.dht.records import ContributionRecord

    out = {key(f"honest{i}"): ContributionRecord(round=r, published_at=0.0, codes=HONEST) for i in range(3)}
    if r >= warmup:
        out[key("newcomer")] = ContributionRecord(round=r, published_at=0.0, codes=HONEST)
        codes = FLOODS[flood]
        out.update({key(f"sybil{i}"): ContributionRecord(round=r, published_at=0.0, codes=codes) for i in range(keys)})
    return out


def pull(contributions: list[tuple[int, float]]) -> float:
    """A round's expected move under the mean rule, per unit of lr and sqrt(d): sqrt(sum v^2) / n
    (the ±1 directions are nearly orthogonal)."""
    return math.sqrt(sum(v * v for _, v in contributions)) / len(contributions) if contributions else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=600, help="flooded rounds over which keys' admission is counted")
    p.add_argument("--warmup", type=int, default=20, help="rounds of the 3 established keys alone, before the flood")
    p.add_argument("--apply-rounds", type=int, default=3, help="rounds whose apply is timed (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    setup_torch(args.threads)
    from onebyte.coordinator_free.agreement import RobustRule
    from onebyte.coordinator_free.policy import RoundPolicy
    from onebyte.coordinator_free.rounds import RoundClock
    from onebyte.coordinator_free.seedlog import entry_line
    from onebyte.zo.codec import ByteCodec

    codec = ByteCodec()
    seniority = RobustRule(max_contributions=64, clip_abs=4.0, seniority_window=64, max_new_contributions=8)
    scenarios = [
        ("v1 (every record)", RobustRule(), "extreme"),
        ("§15 cap 64", RobustRule(max_contributions=64), "extreme"),
        ("§15 cap 64, clip_abs 4", RobustRule(max_contributions=64, clip_abs=4.0), "extreme"),
        ("seniority: cap 64, 8 new, window 64, clip_abs 4", seniority, "extreme"),
        ("seniority: cap 64, 8 new, window 64, clip_abs 4", seniority, "ordinary"),
    ]
    honest_ids = [key(f"honest{i}") for i in range(3)]
    rows, results = [], []
    for label, rule, flood in scenarios:
        policy = RoundPolicy("sybil", 4, codec, rule, RoundClock(0.0, 30.0, 5.0, 3.0))
        log: dict[int, bytes] = {}
        kept_honest, first_newcomer, decide_s, n_kept, pulls, flooded = [0, 0, 0], None, [], [], [], []
        honest_pull = None
        for r in tqdm(range(args.warmup + args.rounds), desc=f"{label}, {flood}", leave=False):
            recs = records_of(r, args.keys, flood, args.warmup)
            t0 = time.perf_counter()
            rs = policy.decide(r, recs, log.get)
            elapsed = time.perf_counter() - t0
            log[r] = entry_line(r, rs.digest, rs.records)
            if r == args.warmup - 1:
                honest_pull = pull(rs.contributions)
            if r < args.warmup:
                continue
            decide_s.append(elapsed)
            n_kept.append(len(rs.contributions))
            pulls.append(pull(rs.contributions))
            for i, h in enumerate(honest_ids):
                kept_honest[i] += h in rs.counts
            if first_newcomer is None and key("newcomer") in rs.counts:
                first_newcomer = r - args.warmup
            if len(flooded) < args.apply_rounds:
                flooded.append(rs)
        rep = make_replica("sgd", "dense")
        apply_s = []
        for rs in flooded:
            t0 = time.perf_counter()
            rep.apply(rs.contributions)
            apply_s.append(time.perf_counter() - t0)
        honest_rs = policy.decide(0, records_of(0, 0, flood, 1))
        t0 = time.perf_counter()
        make_replica("sgd", "dense").apply(honest_rs.contributions)
        honest_apply = time.perf_counter() - t0
        res = {
            "rule": label,
            "flood": flood,
            "keys": args.keys,
            "warmup_rounds": args.warmup,
            "rounds": args.rounds,
            "contributions_kept_median": median(n_kept),
            "decide_seconds_median": median(decide_s),
            "apply_seconds_median": median(apply_s),
            "honest_round_apply_seconds": honest_apply,
            "honest_keys_kept_share": [k / args.rounds for k in kept_honest],
            "newcomer_first_kept_round": first_newcomer,
            "pull_vs_honest_round_median": median(pulls) / honest_pull,
            "pull_vs_honest_round_max": max(pulls) / honest_pull,
        }
        results.append(res)
        rows.append(
            [
                label,
                flood,
                f"{res['contributions_kept_median']:,.0f}",
                f"{res['apply_seconds_median']:.2f}",
                f"{honest_apply:.3f}",
                " / ".join(f"{x:.0%}" for x in res["honest_keys_kept_share"]),
                f"not in {args.rounds}" if first_newcomer is None else str(first_newcomer),
                f"{res['pull_vs_honest_round_median']:.2f} (max {res['pull_vs_honest_round_max']:.2f})",
            ]
        )
        print(rows[-1], flush=True)
    print(
        table(
            rows,
            [
                "rule",
                "flood",
                "kept per round",
                "apply s (flooded)",
                "apply s (honest round)",
                "flooded rounds each established key was kept",
                "newcomer first kept (flooded round)",
                "pull vs an honest round",
            ],
        )
    )
    write_results("sybil_round", {"runs": results, "machine": machine_info(args.threads)}, args.out)


if __name__ == "__main__":
    main()
