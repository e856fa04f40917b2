"""(b) Cost of applying contributions, relative to one plain copy of the trainable parameters.

* copy floor: ``dst.copy_(src)`` per trainable tensor into preallocated buffers (one read and one
  write of every weight: the memory-bandwidth floor of any update).
* ``apply_round(params, [(seed, g)], lr, noise)``: one contribution. Goal: <= 2.0x the copy.
* fused rounds of 8 and 32 contributions (one ``apply_round`` call), per contribution.
* the generator alone, producing z for every trainable tensor:
  - ours: the table windows widened to float32 into preallocated buffers (``buf.copy_(window)``);
  - ours as the perturbation hooks do it: ``perturbed_copy`` (theta + eps z into a fresh tensor),
    and the same arithmetic into a preallocated buffer (``torch.add(.., out=buf)``);
  - ``torch.randn(out=buf)`` per tensor;
  - MeZO: ``torch.manual_seed(seed)`` then ``torch.normal(0, 1, size)`` per tensor (fresh tensors).
* the naive MeZO apply: regenerate z with torch.normal after manual_seed and ``p.add_(z, alpha)``
  (the anchors note measured 0.83 s = 4.8x a copy of 0.17 s).

Repetitions are interleaved and every ratio is taken against the copy time of the same repetition.

    python bench/apply_cost.py [--reps 7] [--warmup 1] [--quick]
"""

from __future__ import annotations

import argparse
import os

import torch
from _common import add_common_args, build_default, setup_torch

from harness import machine_info, median, table, timed, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", default="8,32", help="fused round sizes to time")
    args = p.parse_args()
    if args.quick:
        args.reps, args.warmup, args.rounds = 2, 1, "8"
    setup_torch(args.threads)
    round_sizes = [int(x) for x in args.rounds.split(",") if x]

    from onebyte.zo import apply_round, contribution_seed, perturbed_copy

    _, (loaded, task, replica) = build_default(args, lr=1e-6)
    params, noise = replica.params, replica.noise
    numel = sum(t.numel() for _, t in params)
    bufs = [torch.empty_like(t) for _, t in params]
    for b in bufs:
        b.zero_()  # fault the pages in once
    lr = 1e-7  # tiny: the weights barely move while we time updates on them

    def copy_floor():
        for (_, t), b in zip(params, bufs):
            b.copy_(t)

    def apply_n(n: int, r: int):
        contribs = [(contribution_seed("bench", "peer0", r, k), 1.0 if k % 2 == 0 else -1.0) for k in range(n)]
        return lambda: apply_round(params, contribs, lr, noise)

    def table_windows(seed: int):
        def run():
            for (name, t), b in zip(params, bufs):
                flat = b.view(-1)
                for i, s, m in noise.segments(noise.offset(seed, name), t.numel()):
                    flat[i : i + m].copy_(noise.signs[s : s + m])

        return run

    def perturbed_fresh(seed: int):
        def run():
            for name, t in params:
                perturbed_copy(t, name, seed, 1e-3, noise)

        return run

    def perturbed_into(seed: int):
        def run():
            for (name, t), b in zip(params, bufs):
                src, dst = t.view(-1), b.view(-1)
                for i, s, m in noise.segments(noise.offset(seed, name), t.numel()):
                    torch.add(src[i : i + m], noise.signs[s : s + m], alpha=1e-3, out=dst[i : i + m])

        return run

    def randn_into():
        for b in bufs:
            torch.randn(b.shape, out=b)

    def mezo_normal(seed: int):
        def run():
            torch.manual_seed(seed)
            for _, t in params:
                torch.normal(mean=0.0, std=1.0, size=t.size(), dtype=t.dtype)

        return run

    def mezo_apply(seed: int):
        def run():
            torch.manual_seed(seed)
            for _, t in params:
                z = torch.normal(mean=0.0, std=1.0, size=t.size(), dtype=t.dtype)
                t.add_(z, alpha=-lr)

        return run

    names = (
        ["copy", "apply_1"]
        + [f"apply_{n}" for n in round_sizes]
        + [
            "gen_table_windows_f32",
            "gen_perturbed_copy_fresh",
            "gen_perturbed_into_buf",
            "gen_randn_into_buf",
            "gen_mezo_manual_seed_normal",
            "mezo_apply",
        ]
    )
    reps = []
    for r in range(args.warmup + args.reps):
        seed = contribution_seed("bench", "peer0", 1000 + r, 0)
        rec = {"copy": timed(copy_floor), "apply_1": timed(apply_n(1, r))}
        for n in round_sizes:
            rec[f"apply_{n}"] = timed(apply_n(n, r))
        rec["gen_table_windows_f32"] = timed(table_windows(seed))
        rec["gen_perturbed_copy_fresh"] = timed(perturbed_fresh(seed))
        rec["gen_perturbed_into_buf"] = timed(perturbed_into(seed))
        rec["gen_randn_into_buf"] = timed(randn_into)
        rec["gen_mezo_manual_seed_normal"] = timed(mezo_normal(r))
        rec["mezo_apply"] = timed(mezo_apply(r))
        rec["copy_again"] = timed(copy_floor)
        rec["warmup"] = r < args.warmup
        rec["loadavg_1min"] = os.getloadavg()[0]
        reps.append(rec)
        print(
            f"rep {r}{' (warm-up)' if rec['warmup'] else ''}: " + "  ".join(f"{k}={rec[k]:.3f}" for k in names),
            flush=True,
        )

    meas = [r for r in reps if not r["warmup"]]

    def per_contrib(k):
        return int(k.split("_")[1]) if k.startswith("apply_") else 1

    def base(r):  # copy floor of this repetition: the mean of the two copies that bracket it
        return (r["copy"] + r["copy_again"]) / 2

    summary = {
        "trainable_parameters": numel,
        "trainable_bytes": numel * params[0][1].element_size(),
        "copy_s": median([base(r) for r in meas]),
    }
    for k in names[1:]:
        summary[f"{k}_s"] = median([r[k] for r in meas])
        summary[f"{k}_over_copy"] = median([r[k] / base(r) for r in meas])
        if k.startswith("apply_"):
            n = per_contrib(k)
            summary[f"{k}_per_contribution_s"] = summary[f"{k}_s"] / n
            summary[f"{k}_per_contribution_over_copy"] = median([r[k] / n / base(r) for r in meas])
    summary["min_ratios"] = {
        k: min(r[k] for r in meas) / min(min(r["copy"], r["copy_again"]) for r in meas) / per_contrib(k)
        for k in names[1:]
    }
    summary["loadavg_1min_median"] = median([r["loadavg_1min"] for r in meas])
    summary["copy_GBps"] = 2 * summary["trainable_bytes"] / summary["copy_s"] / 1e9
    summary["goal_apply_1_over_copy"] = 2.0
    summary["anchor_mezo_apply_s"] = 0.83
    summary["anchor_mezo_apply_over_copy"] = 4.8

    result = {
        "benchmark": "apply_cost",
        "config": vars(args),
        "machine": machine_info(args.threads),
        "summary": summary,
        "repetitions": reps,
    }
    path = write_results("apply_cost", result, args.out)

    rows = [
        (
            "plain copy of trainable params (floor)",
            summary["copy_s"],
            1.0,
            "",
            f"{summary['copy_GBps']:.1f} GB/s read+write",
        )
    ]
    rows.append(
        (
            "apply_round, 1 contribution",
            summary["apply_1_s"],
            summary["apply_1_over_copy"],
            summary["apply_1_over_copy"],
            "goal <= 2.0",
        )
    )
    for n in round_sizes:
        rows.append(
            (
                f"apply_round, fused round of {n}",
                summary[f"apply_{n}_s"],
                summary[f"apply_{n}_over_copy"],
                summary[f"apply_{n}_per_contribution_over_copy"],
                f"{summary[f'apply_{n}_per_contribution_s']:.4f} s/contribution",
            )
        )
    labels = {
        "gen_table_windows_f32": "z: table windows -> f32 buffers",
        "gen_perturbed_copy_fresh": "z: perturbed_copy (fresh tensors)",
        "gen_perturbed_into_buf": "z: theta+eps*z into preallocated",
        "gen_randn_into_buf": "z: torch.randn(out=buf)",
        "gen_mezo_manual_seed_normal": "z: manual_seed + torch.normal",
        "mezo_apply": "naive MeZO apply (normal + add)",
    }
    for k, lab in labels.items():
        note = "anchor note: 0.83 s = 4.8x" if k == "mezo_apply" else ""
        rows.append((lab, summary[f"{k}_s"], summary[f"{k}_over_copy"], summary[f"{k}_over_copy"], note))
    print(
        f"\n{numel:,} trainable fp32 parameters, {args.threads} threads, median of {len(meas)} reps after "
        f"{args.warmup} warm-up"
    )
    print(table(rows, ("what", "seconds", "x copy", "x copy per contribution", "note")))
    print(
        "robust to background load, min(x)/min(copy) per contribution: "
        + ", ".join(f"{k}={v:.2f}" for k, v in summary["min_ratios"].items())
    )
    print(f"median 1-min load average during the reps {summary['loadavg_1min_median']:.2f} on {os.cpu_count()} cores")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
