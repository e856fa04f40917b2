"""Shared setup of the model benchmarks in bench/ (the harness itself is bench/harness/).

Every script: SmolLM2-135M (``smollm2-135m``) in fp32, 2 CPU threads, the drugreview task,
batch 16 x max_length 64 unless its flags say otherwise; medians over repetitions after a
warm-up; results as JSON under bench/results/. Timing is reported, never asserted.
"""

from __future__ import annotations

import torch

import harness  # noqa: F401  (puts the repository root on sys.path)


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)


def add_common_args(p, *, batch: int = 16) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="fast smoke run (few repetitions)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/<name>.json)")


def build_default(args, **overrides):
    """(loaded, task, replica) through onebyte's own build()."""
    from onebyte.peer.train import TrainConfig, build

    cfg = TrainConfig(
        model=args.model,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_size=args.batch_size,
        progress=False,
        **overrides,
    )
    return cfg, build(cfg)


def fixed_batch(task, batch_size: int, seed: int = 0):
    from onebyte.peer.train import batch_indices

    return task.train_batch(batch_indices(seed, "bench", 0, 0, task.num_train, batch_size))
