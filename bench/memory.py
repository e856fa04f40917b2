"""(c) Peak memory (resident set size) of onebyte training vs inference only.

Each case runs in its own child process so it starts clean:

"RSS after load" is taken after reading every weight once (the loader may mmap the cached
safetensors file, so weights become resident only when touched).

* inference: load model + task, then N plain forward passes (``task.loss`` under no_grad) of a
  batch;
* training: load model + task, build the Replica (noise table: 2**25 int8 = 32 MiB, plus the
  perturbation hooks), then N onebyte steps (estimate + encode + apply), each on its own batch.

Reported per child: ``ru_maxrss`` of the child (peak over its whole life, loading included);
the RSS right after model + task load; the increment of the whole-life peak over that RSS; and
the peak of the phase alone (the kernel's peak-RSS counter is reset right after loading by
writing 5 to /proc/self/clear_refs, when the kernel allows it; this also resets ru_maxrss, so
the whole-life peak is read just before the reset and combined). Goal: training peak /
inference peak <= 1.3.

    python bench/memory.py [--steps 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

from _common import add_common_args, setup_torch

from harness import machine_info, table, write_results


def _status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else -1


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args) -> dict:
    setup_torch(args.threads)
    import torch

    from onebyte.peer.train import TrainConfig, batch_indices
    from onebyte.tasks.data import load_task
    from onebyte.tasks.loaded_model import trainable_parameters
    from onebyte.tasks.loading import load_model

    out = {"case": args.child, "rss_start_kib": _status_kib("VmRSS")}
    cfg = TrainConfig(
        model=args.model, dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size, lr=1e-6, eps=1e-3
    )
    loaded = load_model(cfg.model, kind=cfg.model_kind, dtype=cfg.dtype, device=cfg.device, init_seed=cfg.init_seed)
    task = load_task(cfg.dataset, tokenizer=loaded.tokenizer, max_length=cfg.max_length, split_seed=cfg.seed)
    model = loaded.model
    out["rss_after_load_untouched_kib"] = _status_kib("VmRSS")
    with torch.no_grad():  # fault in every weight page (they may be mmapped from the cache file)
        for t in model.parameters():
            float(t.sum())
    out["rss_after_load_kib"] = _status_kib("VmRSS")
    out["maxrss_during_load_kib"] = _maxrss_kib()
    out["peak_reset"] = _reset_peak()

    def batch_for(step: int):
        return task.train_batch(batch_indices(cfg.seed, "mem", step, 0, task.num_train, cfg.batch_size))

    if args.child == "inference":
        batch = batch_for(0)
        with torch.no_grad():
            for _ in range(args.steps):
                float(task.loss(model, batch))
    else:
        from onebyte.peer.replica import Replica
        from onebyte.zo import contribution_seed

        replica = Replica(
            model,
            trainable_parameters(model, cfg.trainable),
            lr=cfg.lr,
            eps=cfg.eps,
            codec=cfg.codec,
            table_log2=cfg.table_log2,
        )
        out["rss_after_replica_kib"] = _status_kib("VmRSS")
        for step in range(args.steps):
            batch = replica.to_device(batch_for(step))
            seed = contribution_seed("mem", "peer0", step, 0)
            g, _, _ = replica.estimate(seed, lambda: task.loss(model, batch))
            wire = replica.encode(g)
            replica.apply([(seed, replica.codec.decode(wire))] if wire is not None else [])
    out["rss_end_kib"] = _status_kib("VmRSS")
    out["phase_peak_kib"] = _maxrss_kib() if out["peak_reset"] else None
    out["ru_maxrss_kib"] = max(out["maxrss_during_load_kib"], _maxrss_kib())
    out["increment_over_load_kib"] = out["ru_maxrss_kib"] - out["rss_after_load_kib"]
    if out["phase_peak_kib"] is not None:
        out["phase_increment_over_load_kib"] = out["phase_peak_kib"] - out["rss_after_load_kib"]
    out["batch_shape"] = list(batch.input_ids.shape)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--steps", type=int, default=5, help="forward passes (inference) / training steps (training)")
    p.add_argument("--child", choices=["inference", "training"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.max_length = 1, 4, 32
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return

    results = {}
    for case in ("inference", "training"):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            case,
            "--steps",
            str(args.steps),
            "--model",
            args.model,
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"child {case} failed (rc={proc.returncode})")
        results[case] = json.loads(line[0][len("RESULT ") :])
        print(f"{case}: " + json.dumps(results[case]), flush=True)

    inf, tr = results["inference"], results["training"]
    mib = lambda k: k / 1024  # noqa: E731
    summary = {
        "inference_peak_mib": mib(inf["ru_maxrss_kib"]),
        "training_peak_mib": mib(tr["ru_maxrss_kib"]),
        "training_over_inference_peak": tr["ru_maxrss_kib"] / inf["ru_maxrss_kib"],
        "inference_increment_mib": mib(inf["increment_over_load_kib"]),
        "training_increment_mib": mib(tr["increment_over_load_kib"]),
        "goal_training_over_inference": 1.3,
        "noise_table_mib": 32,
    }
    if inf.get("phase_peak_kib") and tr.get("phase_peak_kib"):
        summary.update(
            {
                "inference_phase_peak_mib": mib(inf["phase_peak_kib"]),
                "training_phase_peak_mib": mib(tr["phase_peak_kib"]),
                "training_over_inference_phase_peak": tr["phase_peak_kib"] / inf["phase_peak_kib"],
                "inference_phase_increment_mib": mib(inf["phase_increment_over_load_kib"]),
                "training_phase_increment_mib": mib(tr["phase_increment_over_load_kib"]),
            }
        )
    result = {
        "benchmark": "memory",
        "config": vars(args),
        "machine": machine_info(args.threads),
        "summary": summary,
        "children": results,
    }
    path = write_results("memory", result, args.out)

    rows = []
    for case, r in results.items():
        rows.append(
            (
                case,
                mib(r["rss_after_load_kib"]),
                mib(r["ru_maxrss_kib"]),
                mib(r["increment_over_load_kib"]),
                mib(r["phase_peak_kib"]) if r.get("phase_peak_kib") else float("nan"),
                mib(r["phase_increment_over_load_kib"]) if r.get("phase_peak_kib") else float("nan"),
            )
        )
    print(f"\n{args.steps} forwards / steps, batch {inf['batch_shape']}, MiB")
    print(
        table(
            rows,
            ("case", "RSS after load", "peak (ru_maxrss)", "peak - load RSS", "phase peak", "phase peak - load RSS"),
        )
    )
    print(f"training / inference peak (ru_maxrss): {summary['training_over_inference_peak']:.3f}  (goal <= 1.3)")
    if "training_over_inference_phase_peak" in summary:
        print(f"training / inference peak after load (phase peak): {summary['training_over_inference_phase_peak']:.3f}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
