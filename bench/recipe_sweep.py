"""(f) Choosing the `mr` recipe: which trainable set, lr and contributions per round beat calibration.

Only the final norm is trained (576 numbers in SmolLM2-135M). Everything before it is frozen, so
its output per example is computed once (onebyte.tasks.trunk.FrozenTrunk, the class a peer uses)
and the sweep replays onebyte's rule on those features: z from the run's noise table for the seeds
a peer would use, L+/L- on a batch, g coded to one byte (log8:-8:8), and every round moves the
weights by -lr * mean(g_k z_k) over its contributions. Thousands of rounds cost seconds, so lr and
contributions per round can be swept at equal samples. The first-order line (Adam on the same 576
numbers, full batch) says how much this trainable set can learn at all.

    python bench/recipe_sweep.py [--train 1200] [--lrs 0.1,0.3,0.6] [--contribs 256] [--samples 327680]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import setup_torch

from harness import machine_info, write_results


def features(args):
    """Trunk outputs of a hash-chosen training subset and of the whole held-out split, as a peer caches them."""
    from onebyte.peer.train import TrainConfig, build

    loaded, task, replica = build(
        TrainConfig(
            model=args.model,
            dataset=args.dataset,
            trainable=args.trainable,
            max_length=args.max_length,
            train_size=args.train,
            progress=False,
        )
    )
    trunk = task.trunk
    assert trunk is not None, "the trainable set reaches into the trunk: nothing to cache"
    out = {}
    for split, n in (("eval", task.num_eval), ("train", task.num_train)):
        keys, labels = [], []
        for a in range(0, n, 32):
            idx = list(range(a, min(n, a + 32)))
            b = task._make_batch(split, idx)
            trunk._fill(b, b.keys.tolist())
            keys += b.keys.tolist()
            labels += b.labels.tolist()
            print(f"  {split} {a + len(idx)}/{n}", flush=True)
        out[split] = (torch.stack([trunk.cache[k] for k in keys]), torch.tensor(labels))
    head = trunk.head.weight[task.label_token_ids].detach().clone()
    return out, trunk.norm, head, replica


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default="mr")
    p.add_argument("--trainable", default=r"^model\.norm\.weight$")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument(
        "--train", type=int, default=1200, help="hash-chosen training examples whose trunk outputs are computed"
    )
    p.add_argument("--lrs", default="0.1,0.3,0.6")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--contribs", default="256", help="contributions per round (all peers together)")
    p.add_argument(
        "--samples", type=int, default=327680, help="examples seen per configuration (rounds x contributions x batch)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    setup_torch(args.threads)
    from onebyte.tasks.metrics import classification_scores
    from onebyte.zo import ByteCodec, contribution_seed

    t0 = time.perf_counter()
    feats, norm, head, replica = features(args)
    print(f"trunk outputs in {time.perf_counter() - t0:.0f} s")
    (Xt, yt), (Xe, ye) = feats["train"], feats["eval"]
    name, g0 = replica.params[0][0], replica.params[0][1].detach().clone()
    codec, noise = ByteCodec(), replica.noise

    def logits(X, g):
        with torch.no_grad():
            return _normed(X, norm) * g @ head.T

    def score(g):
        return classification_scores(logits(Xe, g).double().numpy(), ye.numpy())

    def ce(idx, g):
        return float(torch.nn.functional.cross_entropy(logits(Xt[idx], g), yt[idx]))

    result = {
        "benchmark": "recipe_sweep",
        "config": vars(args),
        "machine": machine_info(args.threads),
        "zero_shot": score(g0),
        "runs": [],
    }
    print("zero-shot", result["zero_shot"])
    rng = np.random.default_rng(0)
    for k in [int(x) for x in args.contribs.split(",")]:
        for lr in [float(x) for x in args.lrs.split(",")]:
            g, curve = g0.clone(), []
            rounds = args.samples // (k * args.batch)
            for r in range(rounds):
                total = torch.zeros_like(g)
                for i in range(k):
                    z = noise.direction(contribution_seed("sweep", "peer", r, i), name, g.numel()).float()
                    idx = torch.from_numpy(rng.choice(len(yt), args.batch, replace=False))
                    v = codec.roundtrip((ce(idx, g + args.eps * z) - ce(idx, g - args.eps * z)) / (2 * args.eps))
                    total += v * z
                g = g - lr / k * total
                if (r + 1) % max(1, rounds // 8) == 0 or r == rounds - 1:
                    s = score(g)
                    curve.append({"rounds": r + 1, "samples": (r + 1) * k * args.batch, **s})
            result["runs"].append(
                {
                    "method": "onebyte (emulated on cached trunk outputs)",
                    "lr": lr,
                    "contribs_per_round": k,
                    "rounds": rounds,
                    "curve": curve,
                }
            )
            print(
                f"lr {lr:g} k {k}: balanced accuracy " + " ".join(f"{c['balanced_accuracy']:.3f}" for c in curve),
                flush=True,
            )
    write_results("recipe_sweep", result, args.out)  # the zeroth-order runs, before the first-order line
    # first-order line on the same trainable set
    torch.set_grad_enabled(True)
    for lr in (1e-2, 3e-2):
        g = g0.clone().requires_grad_(True)
        opt, curve = torch.optim.Adam([g], lr=lr), []
        for step in range(400):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(_normed(Xt, norm) * g @ head.T, yt)
            loss.backward()
            opt.step()
            if (step + 1) % 50 == 0:
                curve.append({"steps": step + 1, **score(g.detach())})
        result["runs"].append({"method": "Adam, full batch (first-order line)", "lr": lr, "curve": curve})
        print(
            f"adam lr {lr:g}: balanced accuracy " + " ".join(f"{c['balanced_accuracy']:.3f}" for c in curve), flush=True
        )
    write_results("recipe_sweep", result, args.out)


def _normed(X: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """The final RMSNorm without its weight (the weight is what is trained)."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return X * torch.rsqrt(X.pow(2).mean(-1, keepdim=True) + eps)


if __name__ == "__main__":
    main()
