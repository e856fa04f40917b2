"""What the robust round rule (docs/PROTOCOL.md §15: cap, absolute and median clip) costs honest
training, and what it bounds against a Sybil flood.

1. Honest training at equal samples: ``onebyte-N`` exactly as bench/accuracy_compare.py runs it
   (N simulated peers, rounds decided by ``decide_round`` and applied by ``Replica.apply``), once
   under v1's rule and once per robust rule, same seeds, same batches. Reports eval loss and
   accuracy after the same number of samples, and the share of honest codes the clip changed.
2. A flood: from the trained weights, one normal round (the honest peers' codes) against the same
   round plus F fresh keys each sending K codes of the largest byte: L2 norm of the weight change,
   under v1 and under each rule.
3. Work: applying a round of 1,000 keys (one code each) under v1 and under the cap.

    python bench/robust_rule.py [--model tiny-llama] [--samples 256] [--seeds 0 1]

Timing is reported, never asserted. Results: bench/results/robust_rule.json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import statistics
import time

import accuracy_compare as ac
import torch
from _common import setup_torch

from harness import machine_info, write_results


def rule_of(spec: str):
    from onebyte.coordinator_free.agreement import RobustRule

    if spec == "v1":
        return RobustRule()
    kw = dict(part.split("=") for part in spec.split(","))
    return RobustRule(
        int(kw["cap"]) if "cap" in kw else None,
        float(kw["abs"]) if "abs" in kw else None,
        float(kw["median"]) if "median" in kw else None,
    )


def move(rep, contributions) -> float:
    before = [t.clone() for _, t in rep.params]
    rep.apply(contributions)
    out = math.sqrt(sum(float(((t - b) ** 2).sum()) for (_, t), b in zip(rep.params, before)))
    with torch.no_grad():
        for (_, t), b in zip(rep.params, before):
            t.copy_(b)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--dataset", default="drugreview")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--trainable", default=None)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--eval-limit", type=int, default=128)
    p.add_argument("--peers", type=int, default=2)
    p.add_argument("--contribs", type=int, default=2)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rules", nargs="+", default=["abs=4", "median=4", "abs=4,median=4,cap=64"])
    p.add_argument("--flood-keys", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.text_column, args.label_column, args.label_words = "text", "label", None
    setup_torch(args.threads)
    from onebyte.coordinator_free import agreement
    from onebyte.coordinator_free.agreement import decide_round
    from onebyte.dht.records import ContributionRecord

    bench = ac.Bench(args)
    original = agreement.decide_round
    results = {
        "machine": machine_info(args.threads),
        "args": vars(args),
        "training": [],
        "flood": [],
        "work": {},
        "initial_eval": bench.eval(),
    }
    for spec in ["v1", *args.rules]:
        rule = rule_of(spec)
        agreement.decide_round = functools.partial(original, rule=rule)  # what zo_run's rounds go through
        for seed in args.seeds:
            r = bench.zo_run(
                peers=args.peers,
                codec="log8:-8:8",
                lr=args.lr,
                eps=args.eps,
                samples=args.samples,
                seed=seed,
                eval_every=None,
                tag=f"onebyte-{args.peers}",
            )
            ev = bench.eval()
            gs = [abs(g) for g in r["g"]]
            clipped = None
            if rule.clip_abs is not None or rule.clip_median is not None:
                lim = rule.clip_abs if rule.clip_median is None else None
                clipped = sum(1 for g in gs if lim is not None and g > lim) / len(gs) if lim is not None else None
            row = {
                "rule": spec,
                "seed": seed,
                "samples": r["samples"],
                "eval_loss": ev["loss"],
                "accuracy": ev["accuracy"],
                "balanced_accuracy": ev["balanced_accuracy"],
                "g_median": statistics.median(gs),
                "g_p90": sorted(gs)[int(0.9 * len(gs))],
                "g_max": max(gs),
                "share_above_clip_abs": clipped,
            }
            results["training"].append(row)
            print(row, flush=True)
    agreement.decide_round = original
    # the flood, from the weights the last v1 run left (any trained state will do)
    rep = bench.replica
    codec = rep.codec
    honest = {
        hashlib.sha256(f"peer{i}".encode()).hexdigest(): bytes([0x41 + 3 * i, 0xC1 + 2 * i][: args.contribs])
        for i in range(args.peers)
    }
    sybils = {
        hashlib.sha256(f"sybil{i}".encode()).hexdigest(): bytes([codec.encode(codec.max_value)] * args.contribs)
        for i in range(args.flood_keys)
    }
    for spec in ["v1", *args.rules]:
        rule = rule_of(spec)
        moves = {}
        for name, recs in (("normal", honest), ("flood", honest | sybils)):
            records = {k: ContributionRecord(round=7, published_at=0.0, codes=v) for k, v in recs.items()}
            rs = decide_round(
                "flood", 7, records, close_time=1.0, contribs_per_round=args.contribs, codec=codec, rule=rule
            )
            moves[name] = move(rep, rs.contributions)
            moves[f"{name}_n"] = len(rs.contributions)
        row = {"rule": spec, **moves, "ratio": moves["flood"] / moves["normal"]}
        results["flood"].append(row)
        print(row, flush=True)
    many = {hashlib.sha256(f"k{i}".encode()).hexdigest(): b"\x41" for i in range(1000)}
    records = {k: ContributionRecord(round=9, published_at=0.0, codes=v) for k, v in many.items()}
    for spec in ["v1", "cap=64"]:
        t0 = time.perf_counter()
        rs = decide_round("work", 9, records, close_time=1.0, contribs_per_round=1, codec=codec, rule=rule_of(spec))
        t1 = time.perf_counter()
        rep.apply(rs.contributions)
        t2 = time.perf_counter()
        results["work"][spec] = {
            "keys": 1000,
            "applied": len(rs.contributions),
            "decide_seconds": t1 - t0,
            "apply_seconds": t2 - t1,
        }
        print(spec, results["work"][spec], flush=True)
    print(write_results("robust_rule", results))


if __name__ == "__main__":
    main()
