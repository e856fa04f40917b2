"""What protocol v3's stateful rules cost a peer: the apply of a round, and the state's memory.

On SmolLM2-135M's last block MLP + final norm shapes (2.66 M numbers, the "norm + last MLP"
trainable set of BENCHMARKS.md (h) and (j)), random float32 weights, for n = 1, 64 and 1,024
contributions per round, dense and lowrank:4 directions: seconds per round applied by
``Replica.apply`` under sgd (v1/v2), nesterov and adam (v3), and the same in copies of the
trainable set (one ``copy_`` of every tensor, timed in the same repetition). Memory: the state's
bytes in copies of the trainable set.

    python bench/v3_apply.py [--reps 3] [--ns 1,64,1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import setup_torch

from harness import machine_info, median, table, write_results

SHAPES = {  # SmolLM2-135M: hidden 576, MLP 1536
    "model.layers.29.mlp.down_proj.weight": (576, 1536),
    "model.layers.29.mlp.gate_proj.weight": (1536, 576),
    "model.layers.29.mlp.up_proj.weight": (1536, 576),
    "model.layers.29.post_attention_layernorm.weight": (576,),
    "model.norm.weight": (576,),
}


class Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for name, shape in SHAPES.items():
            self.register_parameter(name.replace(".", "_"), torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.02))


def make_replica(optimizer: str, directions: str):
    from onebyte.peer.replica import Replica

    model = Holder()
    params = [(n.replace("_", "."), p) for n, p in model.named_parameters()]
    return Replica(model, params, lr=1e-3, eps=1e-3, table_log2=22, directions=directions, optimizer=optimizer)


def round_of(n: int, r: int):
    from onebyte.zo import ByteCodec, contribution_seed

    codec = ByteCodec()
    return [(contribution_seed("v3", f"p{k % 16}", r, k), codec.decode((37 * k + 11 * r + 3) % 256)) for k in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="results JSON (default bench/results/v3_apply.json)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ns", default="1,64,1024")
    args = p.parse_args()
    setup_torch(args.threads)
    ns = [int(x) for x in args.ns.split(",")]
    rows, results = [], []
    for directions in ("dense", "lowrank:4"):
        for optimizer in ("sgd", "nesterov", "adam"):
            rep = make_replica(optimizer, directions)
            bufs = [torch.empty_like(t) for _, t in rep.params]
            for n in ns:
                times, copies = [], []
                for r in range(args.reps + 1):
                    t0 = time.perf_counter()
                    for b, (_, t) in zip(bufs, rep.params):
                        b.copy_(t)
                    copy = time.perf_counter() - t0
                    contribs = round_of(n, r)
                    t0 = time.perf_counter()
                    rep.apply(contribs)
                    if r:  # the first is a warm-up
                        times.append(time.perf_counter() - t0)
                        copies.append(copy)
                sec, cp = median(times), median(copies)
                state = sum(t.numel() * t.element_size() for _, t in rep.state_tensors()[len(rep.params) :])
                weights = sum(t.numel() * t.element_size() for _, t in rep.params)
                results.append(
                    {
                        "directions": directions,
                        "optimizer": optimizer,
                        "n": n,
                        "seconds": sec,
                        "copy_seconds": cp,
                        "copies": sec / cp,
                        "state_copies": state / weights,
                    }
                )
                rows.append([directions, optimizer, n, f"{sec * 1e3:.1f}", f"{sec / cp:.1f}", f"{state / weights:.2f}"])
                print(rows[-1], flush=True)
    print(table(rows, ("directions", "rule", "n", "ms / round", "weight copies", "state (copies)")))
    write_results(
        "v3_apply",
        {
            "machine": machine_info(args.threads),
            "parameters": sum(t.numel() for _, t in make_replica("sgd", "dense").params),
        }
        | {"results": results},
        args.out,
    )


if __name__ == "__main__":
    main()
