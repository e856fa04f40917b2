"""(a) Time of one onebyte training step / time of two plain forward passes on the same batch.

One onebyte step = one contribution: ``replica.estimate(seed, loss_fn)`` (two forwards at
theta +- eps z through perturbed copies, theta never written) + ``replica.encode(g)`` +
``replica.apply([(seed, g)])``. Goal: <= 1.15x two forwards.

The anchor is the naive MeZO recipe on the same batch: in-place theta += eps z with z drawn
per tensor by torch.normal after torch.manual_seed(seed), four regenerations per step
(+eps, -2eps, +eps restore, update). The anchors note measured 2.31x (batch 8 x 64).

Repetitions are interleaved (two forwards, onebyte step, MeZO step, ...) and the ratio is taken
per repetition, so background load on the machine affects numerator and denominator alike.

    python bench/step_time.py [--reps 5] [--warmup 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import add_common_args, build_default, fixed_batch, setup_torch

from harness import machine_info, median, table, timed, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-6, help="lr of both updates (irrelevant to timing)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--no-mezo", action="store_true", help="skip the naive MeZO anchor")
    args = p.parse_args()
    if args.quick:
        args.reps, args.warmup = 1, 1
        args.batch_size, args.max_length = 4, 32
    setup_torch(args.threads)

    import onebyte.zo.perturb as perturb_mod
    from onebyte.zo import contribution_seed

    cfg, (loaded, task, replica) = build_default(args, lr=args.lr, eps=args.eps)
    model = replica.model
    batch = replica.to_device(fixed_batch(task, args.batch_size))
    loss_fn = lambda: task.loss(model, batch)  # noqa: E731

    # --- instrumentation: time spent inside perturbed_copy during a step (bench-side wrapper) ---
    real_copy = perturb_mod.perturbed_copy
    acc = {"t": 0.0, "n": 0, "elems": 0}

    def timed_copy(theta, *a, **k):
        t = time.perf_counter()
        out = real_copy(theta, *a, **k)
        acc["t"] += time.perf_counter() - t
        acc["n"] += 1
        acc["elems"] += theta.numel()
        return out

    perturb_mod.perturbed_copy = timed_copy

    def two_forwards():
        with torch.no_grad():
            float(loss_fn())
            float(loss_fn())

    def onebyte_step(seed: int) -> dict:
        acc.update(t=0.0, n=0, elems=0)
        t0 = time.perf_counter()
        g, lp, lm = replica.estimate(seed, loss_fn)
        t1 = time.perf_counter()
        wire = replica.encode(g)
        contrib = [(seed, replica.codec.decode(wire))] if wire is not None else []
        t2 = time.perf_counter()
        replica.apply(contrib)
        t3 = time.perf_counter()
        return {
            "step": t3 - t0,
            "estimate": t1 - t0,
            "copies": acc["t"],
            "copies_count": acc["n"],
            "copied_elements": acc["elems"],
            "forwards": (t1 - t0) - acc["t"],
            "encode": t2 - t1,
            "apply": t3 - t2,
            "g": g,
        }

    mezo_params = [p_ for _, p_ in model.named_parameters()]  # tied weights once

    def mezo_perturb(seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        for p_ in mezo_params:
            z = torch.normal(mean=0.0, std=1.0, size=p_.size(), device=p_.device, dtype=p_.dtype)
            p_.data.add_(z, alpha=scale)

    def mezo_step(seed: int) -> dict:
        eps = args.eps
        tp = 0.0
        with torch.no_grad():
            t0 = time.perf_counter()
            mezo_perturb(seed, eps)
            t1 = time.perf_counter()
            tp += t1 - t0
            lp = float(loss_fn())
            t2 = time.perf_counter()
            mezo_perturb(seed, -2 * eps)
            t3 = time.perf_counter()
            tp += t3 - t2
            lm = float(loss_fn())
            t4 = time.perf_counter()
            mezo_perturb(seed, eps)
            t5 = time.perf_counter()
            tp += t5 - t4
            g = (lp - lm) / (2 * eps)
            mezo_perturb(seed, -args.lr * g)
            t6 = time.perf_counter()
        return {"step": t6 - t0, "perturb_passes_3": tp, "forwards": (t2 - t1) + (t4 - t3), "update": t6 - t5}

    rows = []
    for r in range(args.warmup + args.reps):
        seed = contribution_seed("bench", "peer0", r, 0)
        rec = {"fwd2": timed(two_forwards), "onebyte": onebyte_step(seed)}
        if not args.no_mezo:
            rec["mezo"] = mezo_step(seed & 0x7FFFFFFF)
        rec["warmup"] = r < args.warmup
        rec["loadavg_1min"] = os.getloadavg()[0]
        rows.append(rec)
        print(
            f"rep {r}{' (warm-up)' if rec['warmup'] else ''}: 2 fwd {rec['fwd2']:.3f}s  onebyte "
            f"{rec['onebyte']['step']:.3f}s" + (f"  mezo {rec['mezo']['step']:.3f}s" if "mezo" in rec else ""),
            flush=True,
        )
    perturb_mod.perturbed_copy = real_copy

    meas = [r for r in rows if not r["warmup"]]
    fwd2 = median([r["fwd2"] for r in meas])
    ob = {
        k: median([r["onebyte"][k] for r in meas])
        for k in ("step", "estimate", "copies", "forwards", "encode", "apply")
    }
    ratio = median([r["onebyte"]["step"] / r["fwd2"] for r in meas])
    summary = {
        "two_forwards_s": fwd2,
        "onebyte_step_s": ob["step"],
        "onebyte_step_over_two_forwards": ratio,
        "goal": 1.15,
        "min_onebyte_step_over_min_two_forwards": min(r["onebyte"]["step"] for r in meas)
        / min(r["fwd2"] for r in meas),
        "loadavg_1min_median": median([r["loadavg_1min"] for r in meas]),
        "onebyte_breakdown_s": ob,
        "onebyte_breakdown_over_two_forwards": {k: median([r["onebyte"][k] / r["fwd2"] for r in meas]) for k in ob},
        "perturbed_copies_per_step": meas[0]["onebyte"]["copies_count"],
        "perturbed_elements_per_step": meas[0]["onebyte"]["copied_elements"],
        "trainable_parameters": replica.num_trainable,
    }
    if not args.no_mezo:
        summary["mezo_step_s"] = median([r["mezo"]["step"] for r in meas])
        summary["mezo_step_over_two_forwards"] = median([r["mezo"]["step"] / r["fwd2"] for r in meas])
        summary["mezo_breakdown_s"] = {
            k: median([r["mezo"][k] for r in meas]) for k in ("perturb_passes_3", "forwards", "update")
        }
        summary["min_mezo_step_over_min_two_forwards"] = min(r["mezo"]["step"] for r in meas) / min(
            r["fwd2"] for r in meas
        )
        summary["anchor_mezo_step_over_two_forwards"] = 2.31
    result = {
        "benchmark": "step_time",
        "config": {**vars(args), "dataset": "drugreview", "batch_shape": list(batch.input_ids.shape)},
        "machine": machine_info(args.threads),
        "summary": summary,
        "repetitions": rows,
    }
    path = write_results("step_time", result, args.out)

    tab = [
        ("two plain forwards", fwd2, 1.0, ""),
        ("onebyte step (estimate+encode+apply)", ob["step"], ratio, "goal <= 1.15"),
        (
            "  perturbed copies (inside estimate)",
            ob["copies"],
            summary["onebyte_breakdown_over_two_forwards"]["copies"],
            f"{summary['perturbed_copies_per_step']} copies",
        ),
        (
            "  forwards + hooks (estimate - copies)",
            ob["forwards"],
            summary["onebyte_breakdown_over_two_forwards"]["forwards"],
            "",
        ),
        ("  encode", ob["encode"], summary["onebyte_breakdown_over_two_forwards"]["encode"], ""),
        ("  apply (1 contribution)", ob["apply"], summary["onebyte_breakdown_over_two_forwards"]["apply"], ""),
    ]
    if not args.no_mezo:
        mb = summary["mezo_breakdown_s"]
        tab += [
            (
                "naive MeZO step (4 regenerations)",
                summary["mezo_step_s"],
                summary["mezo_step_over_two_forwards"],
                "anchor note: 2.31x",
            ),
            ("  3 in-place perturb passes", mb["perturb_passes_3"], mb["perturb_passes_3"] / fwd2, ""),
            ("  2 forwards", mb["forwards"], mb["forwards"] / fwd2, ""),
            ("  update (regenerate + add)", mb["update"], mb["update"] / fwd2, ""),
        ]
    print(
        f"\nbatch {list(batch.input_ids.shape)}, {args.threads} threads, median of {len(meas)} reps after "
        f"{args.warmup} warm-up"
    )
    print(table(tab, ("what", "seconds", "x two fwd", "note")))
    print(
        f"robust to background load: min(step)/min(two fwd) = {summary['min_onebyte_step_over_min_two_forwards']:.3f}"
        + (f", naive MeZO {summary['min_mezo_step_over_min_two_forwards']:.3f}" if not args.no_mezo else "")
        + f"; median 1-min load average during the reps {summary['loadavg_1min_median']:.2f} on {os.cpu_count()} cores"
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
