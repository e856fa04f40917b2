"""(d) Held-out accuracy on the embedded drugreview task: zero-shot vs onebyte training.

1. lr sweep: for each lr (eps fixed), ``train(TrainConfig(...), built=build(cfg))`` for a few steps
   from the pretrained weights with the byte codec, then eval loss/accuracy on the first
   ``--sweep-eval`` eval examples. The lr with the lowest subset eval loss is picked (accuracy on
   ~100 examples moves in steps of 1%, too coarse to choose on).
2. main runs, same lr, seed, contribution seeds and batches: ``codec="log8:-8:8"`` (one byte per
   g) and ``codec="float32"`` (full-precision g), each for ``--steps`` steps from the pretrained
   weights (``build()`` reloads them from the cache).

Accuracy is computed here per example on the whole eval split (zero-shot once, then after each
run), and also on the eval examples the sweep never looked at. ``train()`` itself is given
``eval_size=1`` so that it does not spend a full evaluation before and after every run.
The codec's own error is recorded by wrapping ``replica.encode``: every g produced, its wire
value and decode(encode(g)), with the relative error and how many were clipped (|g| above the
top code) or zeroed (|g| below half the smallest code). Baselines: zero-shot and majority class.

    python bench/accuracy.py [--steps 300] [--sweep-steps 60] [--lr LR (skip the sweep)] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from _common import add_common_args, setup_torch

from harness import RESULTS, machine_info, results_path, table, write_results


def evaluate_per_example(task, model, batch_size: int, limit: int | None = None) -> dict:
    preds, labels, losses = [], [], []
    with torch.no_grad():
        for batch in task.eval_batches(batch_size, limit):
            logits = task.class_logits(model, batch)
            y = batch.labels.to(logits.device)
            losses += torch.nn.functional.cross_entropy(logits, y, reduction="none").tolist()
            preds += logits.argmax(-1).tolist()
            labels += y.tolist()
    return {"pred": preds, "label": labels, "loss": losses}


def scores(ev: dict, lo: int = 0, hi: int | None = None) -> dict:
    p, y, losses = ev["pred"][lo:hi], ev["label"][lo:hi], ev["loss"][lo:hi]
    n = len(y)
    return {
        "n": n,
        "accuracy": sum(int(a == b) for a, b in zip(p, y)) / n if n else math.nan,
        "loss": float(np.mean(losses)) if n else math.nan,
        "predicted_positive": sum(p) / n if n else math.nan,
    }


def codec_stats(records: list[dict], codec_name: str) -> dict:
    from onebyte.zo import make_codec

    codec = make_codec(codec_name)
    gs = [r["g"] for r in records if math.isfinite(r["g"])]
    out = {"codec": codec_name, "count": len(records), "non_finite": len(records) - len(gs)}
    if not gs:
        return out
    dec = [codec.roundtrip(g) for g in gs]
    rel = [abs(d - g) / abs(g) for g, d in zip(gs, dec) if g != 0]
    a = np.abs(np.asarray(gs))
    out.update(
        {
            "abs_g_min": float(a.min()),
            "abs_g_median": float(np.median(a)),
            "abs_g_max": float(a.max()),
            "rel_error_median": float(np.median(rel)) if rel else 0.0,
            "rel_error_mean": float(np.mean(rel)) if rel else 0.0,
            "rel_error_max": float(np.max(rel)) if rel else 0.0,
        }
    )
    if hasattr(codec, "max_value"):
        out.update(
            {
                "code_min": codec.min_value,
                "code_max": codec.max_value,
                "clipped": int((a > codec.max_value).sum()),
                "zeroed": int((a < codec.min_value / 2).sum()),
                "raised_to_min": int(((a >= codec.min_value / 2) & (a < codec.min_value)).sum()),
                "rel_error_max_in_range": float(
                    max(
                        [
                            e
                            for e, g in zip(rel, [g for g in gs if g != 0])
                            if codec.min_value <= abs(g) <= codec.max_value
                        ],
                        default=0.0,
                    )
                ),
            }
        )
    return out


def run_one(
    base_cfg: dict, lr: float, codec: str, steps: int, eval_limit: int | None, eval_bs: int, log_every: int = 10
) -> dict:
    from onebyte.peer.train import TrainConfig, build, train

    cfg = TrainConfig(**{**base_cfg, "lr": lr, "codec": codec, "steps": steps, "eval_size": 1, "progress": False})
    t0 = time.perf_counter()
    built = build(cfg)
    loaded, task, replica = built
    records = []
    real_encode = replica.encode

    def logging_encode(g):
        wire = real_encode(g)
        records.append({"g": float(g), "wire": wire, "decoded": None if wire is None else replica.codec.decode(wire)})
        if len(records) % log_every == 0:
            print(
                f"    [{codec} lr={lr:g}] step {len(records)}/{steps}  g={g:+.4g}  "
                f"{(time.perf_counter() - t0) / len(records):.2f} s/step",
                flush=True,
            )
        return wire

    replica.encode = logging_encode
    report = train(cfg, built=built)
    ev = evaluate_per_example(task, replica.model, eval_bs, eval_limit)
    return {
        "lr": lr,
        "eps": cfg.eps,
        "codec": codec,
        "steps": steps,
        "train_seconds": report["train_seconds"],
        "seconds_per_step": report["train_seconds"] / steps,
        "losses": report["losses"],
        "contributions_made": report["contributions_made"],
        "contributions_skipped": report["contributions_skipped"],
        "final_sha256": report["final_sha256"],
        "g_records": records,
        "codec_stats": codec_stats(records, codec),
        "eval": ev,
        "total_seconds": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--steps", type=int, default=300, help="steps of each main run")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep-lrs", default="1e-5,3e-5,1e-4")
    p.add_argument("--sweep-steps", type=int, default=60)
    p.add_argument("--sweep-eval", type=int, default=96, help="first N eval examples used to pick the lr")
    p.add_argument("--lr", type=float, default=None, help="skip the sweep and use this lr")
    p.add_argument("--codecs", default="log8:-8:8,float32")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N eval examples only")
    args = p.parse_args()
    if args.quick:
        args.steps, args.sweep_steps, args.sweep_lrs, args.sweep_eval, args.eval_limit = 2, 2, "1e-5,1e-4", 16, 32
        args.batch_size = 4
    setup_torch(args.threads)
    out_name = "accuracy"
    base_cfg = {
        "model": args.model,
        "dtype": args.dtype,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "eps": args.eps,
        "seed": args.seed,
        "eval_batch_size": args.eval_batch_size,
    }
    result = {"benchmark": "accuracy", "config": vars(args), "status": "running"}

    def save():
        result["machine"] = machine_info(args.threads)
        write_results(out_name, result, args.out)

    # zero-shot, once, on the pretrained weights
    from onebyte.peer.train import TrainConfig, build

    t0 = time.perf_counter()
    loaded, task, replica = build(TrainConfig(**{**base_cfg, "progress": False}))
    zs = evaluate_per_example(task, replica.model, args.eval_batch_size, args.eval_limit)
    del loaded, task, replica
    y = zs["label"]
    maj = max(set(y), key=y.count)
    sweep_n = min(args.sweep_eval, len(y))
    result["eval_split"] = {"n": len(y), "class_counts": [y.count(0), y.count(1)], "sweep_subset": sweep_n}
    result["majority_class"] = {
        "class": maj,
        "accuracy": y.count(maj) / len(y),
        "accuracy_unseen": y[sweep_n:].count(maj) / max(1, len(y) - sweep_n),
    }
    result["zero_shot"] = {
        "all": scores(zs),
        "unseen_by_sweep": scores(zs, sweep_n),
        "sweep_subset": scores(zs, 0, sweep_n),
        "eval": zs,
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"eval n={len(y)} class counts {result['eval_split']['class_counts']}; majority-class acc "
        f"{result['majority_class']['accuracy']:.4f}; zero-shot {result['zero_shot']['all']}",
        flush=True,
    )
    save()

    # lr sweep
    if args.lr is None:
        sweep = []
        for lr in [float(x) for x in args.sweep_lrs.split(",")]:
            print(f"sweep lr={lr:g}: {args.sweep_steps} steps", flush=True)
            r = run_one(base_cfg, lr, args.codecs.split(",")[0], args.sweep_steps, sweep_n, args.eval_batch_size)
            r["subset"] = scores(r["eval"])
            print(f"  lr={lr:g}: subset {r['subset']}  ({r['seconds_per_step']:.2f} s/step)", flush=True)
            sweep.append(r)
            result["sweep"] = {"runs": sweep, "zero_shot_subset": result["zero_shot"]["sweep_subset"]}
            save()
        finite = [r for r in sweep if math.isfinite(r["subset"]["loss"])]
        best = min(finite, key=lambda r: r["subset"]["loss"])
        result["sweep"]["chosen_lr"] = best["lr"]
        result["sweep"]["criterion"] = (
            f"lowest eval loss on the first {sweep_n} eval examples after {args.sweep_steps} steps"
        )
        lr = best["lr"]
    else:
        lr = args.lr
        result["sweep"] = result.get("sweep") or {"chosen_lr": lr, "criterion": "given with --lr"}
        try:  # keep an earlier sweep's record if one is on disk
            old = json.loads((RESULTS / f"{out_name}.json").read_text())
            if old.get("sweep", {}).get("runs"):
                result["sweep"] = {
                    **old["sweep"],
                    "chosen_lr": lr,
                    "criterion": old["sweep"].get("criterion", "") + "; lr given with --lr",
                }
        except (OSError, ValueError):
            pass
    print(f"lr = {lr:g}", flush=True)
    save()

    # main runs
    result["runs"] = {}
    for codec in args.codecs.split(","):
        print(f"main run codec={codec} lr={lr:g}: {args.steps} steps", flush=True)
        r = run_one(base_cfg, lr, codec, args.steps, args.eval_limit, args.eval_batch_size)
        r["all"], r["unseen_by_sweep"] = scores(r["eval"]), scores(r["eval"], sweep_n)
        result["runs"][codec] = r
        print(
            f"  {codec}: all {r['all']}  unseen {r['unseen_by_sweep']}  ({r['seconds_per_step']:.2f} s/step)",
            flush=True,
        )
        save()
    # the byte codec applied, counterfactually, to the g values of the float32 run
    if "float32" in result["runs"]:
        byte = next((c for c in result["runs"] if c != "float32"), "log8:-8:8")
        result["byte_codec_on_float32_run_g"] = codec_stats(result["runs"]["float32"]["g_records"], byte)
    result["status"] = "done"
    save()

    rows = [
        (
            "majority class",
            "-",
            "-",
            result["majority_class"]["accuracy"],
            result["majority_class"]["accuracy_unseen"],
            "-",
            "-",
        ),
        (
            "zero-shot",
            "-",
            0,
            result["zero_shot"]["all"]["accuracy"],
            result["zero_shot"]["unseen_by_sweep"]["accuracy"],
            result["zero_shot"]["all"]["loss"],
            result["zero_shot"]["all"]["predicted_positive"],
        ),
    ]
    for codec, r in result["runs"].items():
        rows.append(
            (
                f"onebyte {codec}",
                f"{lr:g}",
                r["steps"],
                r["all"]["accuracy"],
                r["unseen_by_sweep"]["accuracy"],
                r["all"]["loss"],
                r["all"]["predicted_positive"],
            )
        )
    print(f"\neval n={len(y)} (unseen by sweep: {len(y) - sweep_n}), batch {args.batch_size}, eps {args.eps:g}")
    print(table(rows, ("model", "lr", "steps", "acc (all)", "acc (unseen)", "eval loss", "pred. positive")))
    for codec, r in result["runs"].items():
        s = r["codec_stats"]
        first, last = r["losses"][: max(1, len(r["losses"]) // 5)], r["losses"][-max(1, len(r["losses"]) // 5) :]
        print(
            f"{codec}: train loss first 20% {np.mean(first):.4f} -> last 20% {np.mean(last):.4f}; codec: "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items() if k != "codec")
        )
    print(f"\nwrote {results_path(out_name, args.out)}")


if __name__ == "__main__":
    main()
