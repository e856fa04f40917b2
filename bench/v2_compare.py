"""Protocol v1 (dense directions) against v2 (lowrank:1) side by side, SmolLM2-135M on CPU.

* apply: a round of n = 1, 8, 64, 512, 4096 contributions, in multiples of one plain copy of the
  trainable weights (min over repetitions, copy timed in the same process). v1's cost is linear
  in n (one streaming pass per contribution): n >= 512 is extrapolated from its n = 64 rate and
  labelled so. Goal: v2 at 512 <= 3 copies.
* step: one contribution (estimate + apply of n = 1) over one forward over the same rows
  (2 x batch rows: v1 runs two forwards of `batch` rows, v2 one forward of 2 x batch). Goal <= 1.05.
* memory: peak RSS of a child that makes 3 contributions and applies them, over a child that
  only runs forwards over the same rows (both load the same model and task). Goal <= 1.05.
* replay: seconds per replayed round of 8 contributions (what catch-up does per round), times
  5,000 rounds.
* crossing: N ~ (seconds to make one contribution) / (seconds to apply one, at n = 4096).

The machine is shared and loaded, so times are CPU seconds of this process (time.process_time)
with one thread, which time slicing by other processes does not inflate, minimum over
repetitions; wall-clock seconds are recorded next to them, and the load average. (Two threads
on an oversubscribed 2-core machine spend most of a BLAS call waiting for each other.)

    python bench/v2_compare.py [--threads 1] [--reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from _common import add_common_args, fixed_batch, setup_torch

from harness import ROOT, machine_info, table, write_results

NS = (1, 8, 64, 512, 4096)


WALL: dict[str, float] = {}


def _best(fn, reps: int, label: str = "") -> float:
    """Minimum CPU seconds of this process over ``reps`` calls (wall seconds kept in WALL)."""
    out, wall = [], []
    for _ in range(reps):
        w, t = time.perf_counter(), time.process_time()
        fn()
        out.append(time.process_time() - t)
        wall.append(time.perf_counter() - w)
    if label:
        WALL[label] = min(wall)
    return min(out)


def _replica(model, params, directions: str, lr: float = 1e-7):
    from onebyte.peer.replica import Replica

    return Replica(model, params, lr=lr, eps=1e-3, directions=directions)


def memory_child(args) -> None:
    """Peak RSS of inference (mode=inference) or of 3 contributions + their apply (mode=v1/v2)."""
    setup_torch(args.threads)
    from onebyte.peer.train import TrainConfig, build
    from onebyte.zo import contribution_seed

    directions = "dense" if args.mode in ("inference", "v1") else "lowrank:1"
    loaded, task, rep = build(
        TrainConfig(model=args.model, max_length=args.max_length, directions=directions, progress=False)
    )
    batch = fixed_batch(task, args.batch_size)
    double = fixed_batch(task, args.batch_size)
    from onebyte.peer.replica import _concat

    both = _concat([batch, double])
    import gc
    import re
    from pathlib import Path

    gc.collect()
    try:  # reset the peak (VmHWM) so that loading the model does not hide the phase's own peak
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    for r in range(3):
        if args.mode == "inference":
            with torch.no_grad():
                float(task.loss(rep.model, both))
        else:
            seed = contribution_seed("bench", "p", r, 0)
            g, _, _ = rep.estimate_on(seed, batch, task.loss)
            rep.apply([(seed, rep.codec.decode(rep.encode(g) or 0))])
    hwm = int(re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))
    print(
        json.dumps(
            {
                "ru_maxrss_kib": hwm if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "peak_reset_after_load": reset,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.set_defaults(threads=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--sections", default="apply,step,replay,memory", help="which parts to run (comma-separated)")
    p.add_argument("--ns", default=",".join(map(str, NS)), help="round sizes to apply")
    args = p.parse_args()
    if args.mode:
        return memory_child(args)
    if args.quick:
        args.reps = 1
    setup_torch(args.threads)
    from onebyte.peer.train import TrainConfig, build
    from onebyte.zo import ByteCodec, contribution_seed
    from onebyte.zo.exact import apply_round_exact

    loaded, task, _ = build(TrainConfig(model=args.model, max_length=args.max_length, progress=False))
    model, params = loaded.model, _.params
    v1, v2 = _replica(model, params, "dense"), _replica(model, params, "lowrank:1")
    codec = ByteCodec()
    numel = sum(t.numel() for _, t in params)
    bufs = [torch.empty_like(t).zero_() for _, t in params]
    loads = []

    def copy():
        for (_, t), b in zip(params, bufs):
            b.copy_(t)

    def contribs(n: int, r: int):
        return [
            (
                contribution_seed("bench", f"p{k % 64}", r, k // 64),
                codec.decode(0x30 + (k * 37) % 80 | (0x80 if k % 3 else 0)),
            )
            for k in range(n)
        ]

    res: dict = {"trainable_parameters": numel, "threads": args.threads}
    sections = set(args.sections.split(","))
    # --- apply ----------------------------------------------------------------------------------
    copy_s = _best(copy, max(3, args.reps))
    apply = {"copy_s": copy_s, "v1": {}, "v2": {}}
    for n in [int(x) for x in args.ns.split(",")] if "apply" in sections else ():
        reps = args.reps if n <= 64 else 1
        cs = contribs(n, n)
        if n <= 64:
            apply["v1"][n] = _best(lambda: v1.apply(cs), reps, f"v1_apply_{n}") / copy_s
        apply["v2"][n] = _best(lambda: v2.apply(cs), reps, f"v2_apply_{n}") / copy_s
        if n >= 64:  # the exact sum's two routes (PROTOCOL 16.4) apart; v2.apply takes default_grouped's
            for route, grouped in (("float64", False), ("grouped_float32", True)):
                apply.setdefault("v2_routes", {}).setdefault(route, {})[n] = (
                    _best(
                        lambda: apply_round_exact(
                            v2.params,
                            cs,
                            v2.lr,
                            v2.noise,
                            v2.directions,
                            v2.exact_rule,
                            v2.weight_decay,
                            v2.decay,
                            grouped=grouped,
                        ),
                        reps,
                        f"v2_{route}_{n}",
                    )
                    / copy_s
                )
        loads.append(os.getloadavg()[0])
        routes = " ".join(f"{k} {v[n]:.2f}" for k, v in apply.get("v2_routes", {}).items() if n in v)
        print(
            f"apply n={n}: v1 {apply['v1'].get(n, float('nan')):.2f} copies, v2 {apply['v2'][n]:.2f} copies {routes}",
            flush=True,
        )
    copy_s = min(copy_s, _best(copy, max(3, args.reps)))
    rate = apply["v1"].get(64, float("nan")) / 64
    copy_s_first = apply["copy_s"]
    for side in ("v1", "v2"):  # ratios against the better of the two copy timings
        apply[side] = {n: x * copy_s_first / copy_s for n, x in apply[side].items()}
    apply["copy_s"] = copy_s
    rate = apply["v1"].get(64, float("nan")) / 64
    for n in NS:
        apply["v1"].setdefault(n, None)
    apply["v1_per_contribution_at_64"] = rate
    apply["v1_extrapolated"] = {n: rate * n for n in NS if n > 64}
    res["apply"] = apply

    # --- step time --------------------------------------------------------------------------------
    batch = v1.to_device(fixed_batch(task, args.batch_size))
    from onebyte.peer.replica import _concat

    both = _concat([batch, batch])

    def fwd_rows():
        with torch.no_grad():
            float(task.loss(model, both))

    def fwd_two():
        with torch.no_grad():
            float(task.loss(model, batch))
            float(task.loss(model, batch))

    def step(rep, r):
        def run():
            seed = contribution_seed("bench", "p", r, 0)
            g, _, _ = rep.estimate_on(seed, batch, task.loss)
            rep.apply([(seed, rep.codec.decode(rep.encode(g) or 0))])

        return run

    step_res = {k: [] for k in ("fwd_2b_rows", "two_fwd_b_rows", "v1_step", "v2_step", "v1_estimate", "v2_estimate")}
    for r in range(args.reps + 1 if "step" in sections else 0):  # the first is a warm-up
        rec = {
            "fwd_2b_rows": _best(fwd_rows, 1),
            "two_fwd_b_rows": _best(fwd_two, 1),
            "v1_step": _best(step(v1, r), 1),
            "v2_step": _best(step(v2, r), 1),
        }
        seed = contribution_seed("bench", "p", 100 + r, 0)
        rec["v1_estimate"] = _best(lambda: v1.estimate_on(seed, batch, task.loss), 1)
        rec["v2_estimate"] = _best(lambda: v2.estimate_on(seed, batch, task.loss), 1)
        loads.append(os.getloadavg()[0])
        print("step rep " + " ".join(f"{k}={v:.3f}" for k, v in rec.items()), flush=True)
        if r:
            for k, v in rec.items():
                step_res[k].append(v)
    best = {k: min(v) if v else float("nan") for k, v in step_res.items()}
    res["step"] = {
        "batch": [args.batch_size, args.max_length],
        "seconds_min": best,
        "samples": step_res,
        "v1_step_over_one_forward_of_same_rows": best["v1_step"] / best["fwd_2b_rows"],
        "v2_step_over_one_forward_of_same_rows": best["v2_step"] / best["fwd_2b_rows"],
        "v1_step_over_two_forwards": best["v1_step"] / best["two_fwd_b_rows"],
    }

    # --- replay (catch-up) ------------------------------------------------------------------------
    rounds = 10 if args.quick else 30
    replay = {}
    for name, rep in (("v1", v1), ("v2", v2)) if "replay" in sections else ():
        w, t = time.perf_counter(), time.process_time()
        for r in range(rounds):
            rep.apply(contribs(8, 10_000 + r))
        replay[name] = {
            "seconds_per_round_of_8": (time.process_time() - t) / rounds,
            "rounds_timed": rounds,
            "wall_seconds_per_round_of_8": (time.perf_counter() - w) / rounds,
        }
        replay[name]["extrapolated_5000_rounds_s"] = replay[name]["seconds_per_round_of_8"] * 5000
    res["replay"] = replay

    # --- crossing ---------------------------------------------------------------------------------
    make = {"v1": best["v1_estimate"], "v2": best["v2_estimate"]}
    per = {"v1": apply["v1_per_contribution_at_64"] * copy_s, "v2": apply["v2"].get(4096, float("nan")) / 4096 * copy_s}
    res["crossing"] = {k: {"make_s": make[k], "apply_one_s": per[k], "N": make[k] / per[k]} for k in make}

    # --- memory (children) ------------------------------------------------------------------------
    if not args.skip_memory and "memory" in sections:
        mem = {}
        for mode in ("inference", "v1", "v2"):
            cmd = [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--model",
                args.model,
                "--threads",
                str(args.threads),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])["ru_maxrss_kib"] / 1024
        res["memory_mib"] = mem | {
            "v1_over_inference": mem["v1"] / mem["inference"],
            "v2_over_inference": mem["v2"] / mem["inference"],
        }
    res["loadavg_1min"] = loads
    res["wall_seconds_min"] = WALL
    path = write_results(
        "v2_compare",
        {"benchmark": "v2_compare", "config": vars(args), "machine": machine_info(args.threads), "results": res},
        args.out,
    )

    rows = [
        (
            f"apply n={n} (x copy)",
            apply["v1"][n] if apply["v1"][n] is not None else f"~{apply['v1_extrapolated'][n]:.0f} (extrapolated)",
            apply["v2"][n],
        )
        for n in NS
        if n in apply["v2"]
    ]
    st = res["step"]
    rows += [
        (
            "step / one forward of the same rows",
            st["v1_step_over_one_forward_of_same_rows"],
            st["v2_step_over_one_forward_of_same_rows"],
        )
    ]
    if replay:
        rows += [
            (
                "replay: s per round of 8",
                replay["v1"]["seconds_per_round_of_8"],
                replay["v2"]["seconds_per_round_of_8"],
            ),
            (
                "replay: 5,000 rounds (s, extrapolated)",
                replay["v1"]["extrapolated_5000_rounds_s"],
                replay["v2"]["extrapolated_5000_rounds_s"],
            ),
        ]
    rows += [("crossing N = make / apply one", res["crossing"]["v1"]["N"], res["crossing"]["v2"]["N"])]
    if "memory_mib" in res:
        rows += [
            ("peak memory / inference", res["memory_mib"]["v1_over_inference"], res["memory_mib"]["v2_over_inference"])
        ]
    loads = loads or [os.getloadavg()[0]]  # a memory-only run times nothing in this process
    print(
        f"\n{numel:,} trainable parameters, copy {copy_s:.3f} s, {args.threads} thread(s), load average "
        f"{min(loads):.1f}..{max(loads):.1f}"
    )
    print(table(rows, ("what", "v1 (dense)", "v2 (lowrank:1)")))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
