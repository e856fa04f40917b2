"""(e) Held-out accuracy against samples and wall time: zero-shot, MeZO (float32 scalars), onebyte
(one byte) on 1, 2 and 4 simulated peers, and first-order Adam (backprop) as the ceiling.

Every method sees the same number of training samples: ``--samples`` batches of ``--batch-size``
(one batch = one contribution for the zeroth-order methods, one optimizer step for Adam).

* ``mezo-f32``: one peer, one contribution per round, ``codec="float32"`` (full-precision g):
  MeZO's SPSA step with onebyte's noise table and update rule.
* ``onebyte-N`` (N = 1, 2, 4): N peers, each on its own shard of the training data (example i
  belongs to peer i mod N, as ``onebyte peer --shard i/N``), each making ``--contribs`` contributions
  per round from the same weights with the one-byte codec; the round is formed exactly as a swarm
  forms it: every peer's codes go into a ``ContributionRecord``, the round set is decided by
  ``onebyte.coordinator_free.agreement.decide_round`` (canonical peer order, seeds from
  ``contribution_seed(run_id, peer_id, round, index)``) and applied with ``Replica.apply``
  (c_k = -lr * g_k / n). Bit-for-bit what a swarm of N peers applies, without the network. N
  peers therefore take samples / (N * contribs) rounds.
* ``onebyte-N-v2``: as ``onebyte-N`` with protocol v2's low-rank directions (``lowrank:1``,
  docs/PROTOCOL.md §16) on every 2-D trainable tensor and v2's exact round apply: v2 against v1 at
  equal samples (identical to v1 when every trainable tensor is 1-D, e.g. only the final norm);
  ``onebyte-1-v2r2`` and ``onebyte-1-v2r4`` with ``lowrank:2`` and ``lowrank:4``.
* ``adam``: ``torch.optim.Adam`` on the same trainable tensors, loss = the task's own loss, one
  step per batch of one peer's batch sequence.

Wall time: ``train_seconds`` is the measured compute of this one process (serial: the N peers'
contributions are computed one after the other); ``swarm_seconds`` is what N peers working in
parallel would need = sum over rounds of (slowest peer's contributions in that round + the round's
apply), i.e. without network latency (see BENCHMARKS.md, swarm demo, for a real round's latency).

Tuning: every candidate gets the same budget (``--sweep-steps`` batches on the first seed, scored
by eval loss on the first ``--sweep-eval`` held-out examples, lowest wins). Zeroth order: lr over
``--zo-lrs`` at ``--eps`` on ``onebyte-1``, then ε over ``--zo-epss`` at that lr; every other
zeroth-order method (``mezo-f32``, ``onebyte-2/4``) gets its own lr sweep at the chosen ε. Adam: lr
over ``--adam-lrs``. The sweep's subset is a prefix of the held-out set (there is no third split):
tuning sees 96 of the 500 examples the results are reported on. Evaluation: accuracy, balanced
accuracy (mean per-class recall) and loss on the first ``--eval-limit`` held-out examples (all by
default) every ``--eval-every`` batches, with the zero-shot bias-only line (the best a per-class
shift of the zero-shot scores reaches: only results above it show learning beyond calibration).
Results: mean, sd and min..max over ``--seeds``.

When only the final norm is trained (``--trainable '^model\\.norm\\.weight$'``, the demo's recipe), or
the final norm and the last block's feed-forward half \
(``'^model\\.norm\\.weight$|layers\\.29\\.(post_attention_layernorm|mlp)\\.'``
on SmolLM2-135M, onebyte.tasks.trunk), the frozen trunk runs once per example before any method
starts (``trunk_seconds``), the cost every peer pays once; each method's wall time is then its
head-only steps.

    python bench/accuracy_compare.py [--samples 160] [--max-length 32] [--seeds 0] [--quick]
    # a hub task, where the Hugging Face hub is reachable:
    python bench/accuracy_compare.py --dataset glue/sst2 --model facebook/opt-125m ...
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_common_args, setup_torch

from harness import machine_info, results_path, table, write_results


def evaluate(task, model, batch_size: int, limit: int | None) -> dict:
    """The task's own evaluation: accuracy, balanced accuracy (mean per-class recall, which a model
    that favours one label word cannot game), loss, and the bias-only line (onebyte.tasks.metrics)."""
    ev = task.evaluate(model, batch_size=batch_size, limit=limit)
    return {**ev, "predicted_positive": ev["predicted_share"][-1]}


class Bench:
    """One loaded model/task/replica; every run starts from the same initial weights."""

    def __init__(self, args):
        from onebyte.peer.train import TrainConfig, build

        self.args = args
        cfg = TrainConfig(
            model=args.model,
            dataset=args.dataset,
            max_length=args.max_length,
            batch_size=args.batch_size,
            train_size=args.train_size,
            trainable=args.trainable,
            dtype=args.dtype,
            eps=args.eps,
            lr=1e-5,
            progress=False,
            text_column=args.text_column,
            label_column=args.label_column,
            label_words=args.label_words.split(",") if args.label_words else None,
        )
        self.loaded, self.task, self.replica = build(cfg)
        self.replicas = {"dense": self.replica}  # one per direction family, all on the same weights
        self.initial = [t.detach().clone() for _, t in self.replica.params]
        self.initial_sha = self.replica.sha256()
        self.trunk_seconds = self.warm_trunk() if getattr(self.task, "trunk", None) is not None else None

    def warm_trunk(self) -> float:
        """Run the frozen trunk once on every training and held-out example before any method
        starts, so that no method pays for it inside its own wall time (it is paid once per
        example, whatever trains the head). Returns the seconds it took."""
        from tqdm import tqdm

        task, t0 = self.task, time.perf_counter()
        train = sorted(
            range(task.num_train), key=lambda i: int(task.train_batch([i]).attention_mask.sum())
        )  # similar lengths pad least
        batches = [task.train_batch(train[i : i + 32]) for i in range(0, len(train), 32)] + list(task.eval_batches(32))
        with torch.no_grad():
            for batch in tqdm(batches, desc="frozen trunk, once per example", unit="batch"):
                task.class_logits(self.replica.model, batch)
        return time.perf_counter() - t0

    def replica_for(self, directions: str):
        """A Replica with ``directions`` on the same model and tensors (its hooks only exist while it evaluates)."""
        from onebyte.peer.replica import Replica

        if directions not in self.replicas:
            r = self.replica
            self.replicas[directions] = Replica(
                r.model,
                r.params,
                lr=r.lr,
                eps=r.eps,
                weight_decay=r.weight_decay,
                codec="log8:-8:8",
                table_log2=r.noise.table_log2,
                table_key=r.noise.table_key,
                directions=directions,
            )
        return self.replicas[directions]

    def reset(self):
        with torch.no_grad():
            for (_, t), t0 in zip(self.replica.params, self.initial):
                t.copy_(t0)
        assert self.replica.sha256() == self.initial_sha

    def eval(self, limit=None):
        return evaluate(
            self.task, self.replica.model, self.args.eval_batch_size, self.args.eval_limit if limit is None else limit
        )

    def zo_run(
        self,
        *,
        peers: int,
        codec: str,
        lr: float,
        eps: float,
        samples: int,
        seed: int,
        eval_every: int | None,
        eval_limit=None,
        tag="",
        directions: str = "dense",
    ) -> dict:
        """``samples`` contributions in total by ``peers`` simulated peers, ``contribs`` each per round."""
        from onebyte.coordinator_free.agreement import decide_round
        from onebyte.dht.records import ContributionRecord
        from onebyte.peer.train import batch_indices
        from onebyte.zo import contribution_seed, make_codec
        from onebyte.zo.codec import encode_codes

        self.reset()
        rep, task, k = self.replica_for(directions), self.task, self.args.contribs
        rep.lr, rep.eps, rep.codec = float(lr), float(eps), make_codec(codec)
        run_id = f"acc-{seed}"
        # peer ids are hex public keys in a swarm; any distinct 32-byte values behave alike here
        ids = [hashlib.sha256(f"peer{i}".encode()).hexdigest() for i in range(peers)]
        pools = {p: [i for i in range(task.num_train) if i % peers == j] for j, p in enumerate(ids)}
        attempts = dict.fromkeys(ids, 0)
        per_round = peers * k
        rounds = samples // per_round
        curve, losses, gs = [], [], []
        t_train = t_swarm = 0.0
        done = 0
        skipped = 0
        for r in range(rounds):
            records, slowest = {}, 0.0
            for p in ids:
                t0 = time.perf_counter()
                codes = []
                for index in range(k):
                    s = contribution_seed(run_id, p, r, index)
                    idx = batch_indices(seed, p, r, attempts[p], len(pools[p]), self.args.batch_size)
                    attempts[p] += 1
                    batch = rep.to_device(task.train_batch([pools[p][i] for i in idx]))
                    g, lp, lm = rep.estimate(s, lambda: task.loss(rep.model, batch))
                    wire = rep.encode(g)
                    if wire is None:
                        skipped += 1
                        continue
                    codes.append(wire)
                    losses.append((lp + lm) / 2)
                    gs.append(g)
                dt = time.perf_counter() - t0
                t_train += dt
                slowest = max(slowest, dt)
                if codes:
                    records[p] = ContributionRecord(round=r, published_at=0.0, codes=encode_codes(codes, rep.codec))
            t0 = time.perf_counter()
            rs = decide_round(run_id, r, records, close_time=1.0, contribs_per_round=k, codec=rep.codec)
            rep.apply(rs.contributions)
            dt = time.perf_counter() - t0
            t_train += dt
            t_swarm += slowest + dt
            done += per_round
            if eval_every and (done % eval_every == 0 or r == rounds - 1):
                ev = self.eval(eval_limit)
                curve.append(
                    {"samples": done, "rounds": r + 1, "train_seconds": t_train, "swarm_seconds": t_swarm, **ev}
                )
                print(
                    f"    [{tag} lr={lr:g} eps={eps:g} seed={seed}] {done}/{samples} samples, round {r + 1}/{rounds}: "
                    f"acc {ev['accuracy']:.4f} bal {ev['balanced_accuracy']:.4f} loss {ev['loss']:.4f}  "
                    f"({t_train:.0f} s train)",
                    flush=True,
                )
            elif (r + 1) % 10 == 0:
                print(
                    f"    [{tag} lr={lr:g} eps={eps:g} seed={seed}] round {r + 1}/{rounds} "
                    f"({t_train / max(done, 1):.2f} s/contribution)",
                    flush=True,
                )
        return {
            "method": tag,
            "peers": peers,
            "contribs_per_peer_per_round": k,
            "codec": codec,
            "directions": directions,
            "lr": lr,
            "eps": rep.eps,
            "seed": seed,
            "samples": done,
            "rounds": rounds,
            "skipped_nonfinite": skipped,
            "train_seconds": t_train,
            "swarm_seconds": t_swarm,
            "curve": curve,
            **compact(losses, gs),
            "final_sha256": rep.sha256(),
        }

    def adam_run(
        self, *, lr: float, samples: int, seed: int, eval_every: int | None, eval_limit=None, tag="adam"
    ) -> dict:
        from onebyte.peer.train import batch_indices

        self.reset()
        rep, task = self.replica, self.task
        params = [t for _, t in rep.params]
        trainable = {id(t) for t in params}
        saved = {}
        for t in rep.model.parameters():
            saved[id(t)] = t.requires_grad
            t.requires_grad_(id(t) in trainable)
        opt = torch.optim.Adam(params, lr=lr)
        pid = hashlib.sha256(b"peer0").hexdigest()
        curve, losses = [], []
        t_train = 0.0
        try:
            for step in range(samples):
                t0 = time.perf_counter()
                idx = batch_indices(seed, pid, step, 0, task.num_train, self.args.batch_size)
                batch = rep.to_device(task.train_batch(idx))
                with torch.enable_grad():
                    loss = task.loss(rep.model, batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                losses.append(float(loss))
                t_train += time.perf_counter() - t0
                if eval_every and ((step + 1) % eval_every == 0 or step == samples - 1):
                    ev = self.eval(eval_limit)
                    curve.append(
                        {
                            "samples": step + 1,
                            "rounds": step + 1,
                            "train_seconds": t_train,
                            "swarm_seconds": t_train,
                            **ev,
                        }
                    )
                    print(
                        f"    [{tag} lr={lr:g} seed={seed}] {step + 1}/{samples}: acc {ev['accuracy']:.4f} "
                        f"loss {ev['loss']:.4f}  "
                        f"({t_train:.0f} s train)",
                        flush=True,
                    )
                elif (step + 1) % 10 == 0:
                    print(
                        f"    [{tag} lr={lr:g} seed={seed}] step {step + 1}/{samples} "
                        f"({t_train / (step + 1):.2f} s/step)",
                        flush=True,
                    )
        finally:
            opt.zero_grad(set_to_none=True)
            del opt
            for t in rep.model.parameters():
                t.requires_grad_(saved[id(t)])
        return {
            "method": tag,
            "peers": 1,
            "lr": lr,
            "seed": seed,
            "samples": samples,
            "rounds": samples,
            "train_seconds": t_train,
            "swarm_seconds": t_train,
            "curve": curve,
            **compact(losses),
            "final_sha256": rep.sha256(),
        }


KEEP_G = 512  # the first g values of a run are kept (enough to correlate two codecs on the same seeds)


def compact(losses: list[float], gs: list[float] | None = None, points: int = 64) -> dict:
    """What a results file keeps of a run's per-step values: the training loss averaged over
    ``points`` equal spans (a run has up to hundreds of thousands of steps) and the first g values."""
    span = max(1, math.ceil(len(losses) / points))
    out = {
        "train_losses": [float(np.mean(losses[i : i + span])) for i in range(0, len(losses), span)],
        "train_loss_span": span,
    }
    if gs is not None:
        out["g"] = gs[:KEEP_G]
    return out


METHODS = {  # name -> (kind, peers, codec[, directions])
    "mezo-f32": ("zo", 1, "float32"),
    "onebyte-1": ("zo", 1, "log8:-8:8"),
    "onebyte-2": ("zo", 2, "log8:-8:8"),
    "onebyte-4": ("zo", 4, "log8:-8:8"),
    "onebyte-1-v2": ("zo", 1, "log8:-8:8", "lowrank:1"),
    "onebyte-4-v2": ("zo", 4, "log8:-8:8", "lowrank:1"),
    "onebyte-1-v2r2": ("zo", 1, "log8:-8:8", "lowrank:2"),
    "onebyte-1-v2r4": ("zo", 1, "log8:-8:8", "lowrank:4"),
    "adam": ("adam", 1, None),
}


def run_method(
    b: Bench, name: str, lr: float, eps: float | None, samples: int, seed: int, eval_every, eval_limit=None
) -> dict:
    kind, peers, codec, *directions = METHODS[name]
    if kind == "adam":
        return b.adam_run(lr=lr, samples=samples, seed=seed, eval_every=eval_every, eval_limit=eval_limit, tag=name)
    return b.zo_run(
        peers=peers,
        codec=codec,
        lr=lr,
        eps=eps,
        samples=samples,
        seed=seed,
        eval_every=eval_every,
        eval_limit=eval_limit,
        tag=name,
        directions=directions[0] if directions else "dense",
    )


def by_method(result: dict) -> dict:
    out = {}
    for r in result.get("runs", []):
        out.setdefault(r["method"], []).append(r)
    return out


def mean_curve(runs: list[dict], x: str, y: str):
    """Mean (and min, max) over seeds at each evaluation point; x is averaged too (wall times differ)."""
    n = min(len(r["curve"]) for r in runs)
    xs = [float(np.mean([r["curve"][i][x] for r in runs])) for i in range(n)]
    ys = np.array([[r["curve"][i][y] for r in runs] for i in range(n)])
    return xs, ys.mean(1), ys.min(1), ys.max(1)


def plot(results: list[dict], png: str) -> None:
    """One row per results file (task): accuracy and balanced accuracy against training batches and
    against parallel wall time; mean over seeds, band = min..max; the zero-shot score, the zero-shot
    bias-only line (learning above it is more than calibration) and the majority class as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "mezo-f32": "tab:blue",
        "onebyte-1": "tab:orange",
        "onebyte-2": "tab:green",
        "onebyte-4": "tab:red",
        "adam": "black",
    }
    cols = (
        ("samples", "accuracy"),
        ("samples", "balanced_accuracy"),
        ("swarm_seconds", "accuracy"),
        ("swarm_seconds", "balanced_accuracy"),
    )
    xlabels = {
        "samples": "training batches (samples / batch size)",
        "swarm_seconds": "wall time, peers in parallel, s (no network)",
    }
    ylabels = {"accuracy": "held-out accuracy", "balanced_accuracy": "held-out balanced accuracy"}
    fig, axes = plt.subplots(len(results), len(cols), figsize=(20, 4.6 * len(results)), squeeze=False)
    for row, result in enumerate(results):
        zs, c = result["zero_shot"], result["config"]
        groups = by_method(result)
        for col, (x, y) in enumerate(cols):
            ax = axes[row][col]
            for m, rs in groups.items():
                if y not in rs[0]["curve"][0]:
                    continue
                xs, mean, lo, hi = mean_curve(rs, x, y)
                z = zs.get(y, float("nan"))
                ax.plot(
                    [0] + xs,
                    [z, *mean],
                    "-o",
                    ms=2.5,
                    color=colors.get(m),
                    label=(
                        f"{m} (lr {rs[0]['lr']:g}{', eps ' + format(rs[0]['eps'], 'g') if rs[0].get('eps') else ''}, "
                        f"{len(rs)} seeds)"
                    ),
                )
                if len(rs) > 1:
                    ax.fill_between([0] + xs, [z, *lo], [z, *hi], color=colors.get(m), alpha=0.15)
            ax.axhline(
                zs.get(f"bias_line_{y}", float("nan")), ls="-.", color="tab:purple", label="bias-only line (zero-shot)"
            )
            ax.axhline(zs.get(y, float("nan")), ls="--", color="gray", label="zero-shot")
            ax.axhline(
                result["majority_class"]["accuracy"] if y == "accuracy" else 1 / len(zs.get("predicted_share", [0, 0])),
                ls=":",
                color="gray",
                label="majority class" if y == "accuracy" else "chance",
            )
            ax.set_xlabel(xlabels[x])
            ax.set_ylabel(ylabels[y])
            ax.set_title(f"{c['dataset']}: {ylabels[y]}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=7, loc="lower right")
    c = results[0]["config"]
    fig.suptitle(
        f"{c['model'] or 'smollm2-135m'}, trained: {c['trainable'] or 'all weights'}; batch "
        f"{c['batch_size']} x {c['max_length']} tokens, "
        f"{c['contribs']} contributions per peer per round, held-out n={results[0]['zero_shot']['n']}; mean "
        "over seeds, band = min..max",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}")


def summary_rows(result: dict) -> list[tuple]:
    zs = result["zero_shot"]
    rows = [
        ("majority class", "", "", "", "", f"{result['majority_class']['accuracy']:.3f}", "0.500", "", ""),
        (
            "zero-shot",
            "",
            "",
            0,
            0,
            f"{zs['accuracy']:.3f}",
            f"{zs.get('balanced_accuracy', float('nan')):.3f}",
            f"{zs['loss']:.4f}",
            "",
        ),
        (
            "bias-only line (zero-shot, best per-class shift)",
            "",
            "",
            0,
            0,
            f"{zs.get('bias_line_accuracy', float('nan')):.3f}",
            f"{zs.get('bias_line_balanced_accuracy', float('nan')):.3f}",
            "",
            "",
        ),
    ]

    def stat(v):
        v = np.array(v)
        return (
            f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f} ({v.min():.3f}-{v.max():.3f})"
        )

    for m, rs in by_method(result).items():
        last = [r["curve"][-1] for r in rs]
        rows.append(
            (
                m,
                f"{rs[0]['lr']:g}",
                f"{rs[0]['eps']:g}" if "eps" in rs[0] else "",
                rs[0]["samples"],
                rs[0]["rounds"],
                stat([c["accuracy"] for c in last]),
                stat([c["balanced_accuracy"] for c in last]),
                f"{np.mean([c['loss'] for c in last]):.4f}",
                f"{np.mean([r['swarm_seconds'] for r in rs]):.0f}",
            )
        )
    return rows


SUMMARY_HEADER = (
    "method",
    "lr",
    "eps",
    "samples",
    "rounds",
    "accuracy (mean ± sd (min-max))",
    "balanced accuracy",
    "eval loss",
    "wall s, peers in parallel",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.set_defaults(max_length=32)
    p.add_argument("--dataset", default="drugreview")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-words", default=None, help="comma-separated, e.g. ' negative, positive'")
    p.add_argument("--trainable", default=None, help="regex over parameter names (all methods alike); default all")
    p.add_argument(
        "--train-size", type=int, default=None, help="a hash-chosen subset of the training examples (default all)"
    )
    p.add_argument("--samples", type=int, default=160, help="training batches per method (contributions; Adam steps)")
    p.add_argument("--contribs", type=int, default=1, help="contributions per peer per round")
    p.add_argument("--eval-every", type=int, default=40, help="evaluate every this many batches")
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default="mezo-f32,onebyte-1,onebyte-2,onebyte-4,adam")
    p.add_argument("--zo-lrs", default="3e-5,1e-4,3e-4", help="zeroth-order lr sweep (onebyte-1, then mezo-f32)")
    p.add_argument("--zo-epss", default="1e-4,1e-2", help="eps sweep on onebyte-1 at its chosen lr (besides --eps)")
    p.add_argument("--adam-lrs", default="1e-5,1e-4", help="Adam lr sweep")
    p.add_argument("--zo-lr", type=float, default=None, help="skip the zeroth-order sweep")
    p.add_argument("--adam-lr", type=float, default=None, help="skip the Adam sweep")
    p.add_argument("--sweep-steps", type=int, default=30)
    p.add_argument("--sweep-eval", type=int, default=96)
    p.add_argument(
        "--prior-sweep",
        default=None,
        help="results JSON of an earlier run whose sweep runs (same --sweep-steps) count as candidates too",
    )
    p.add_argument(
        "--plot",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only print the tables and draw the PNG (one row per file) from existing results JSONs and exit",
    )
    p.add_argument("--png", default=None, help="with --plot: where the PNG goes (default: next to the first JSON)")
    args = p.parse_args()
    if args.plot:
        import json

        results = [json.loads(Path(f).read_text()) for f in args.plot]
        for f, result in zip(args.plot, results):
            print(f)
            print(table(summary_rows(result), SUMMARY_HEADER))
        plot(results, args.png or str(Path(args.plot[0]).with_suffix(".png")))
        return
    if args.quick:
        args.samples, args.eval_every, args.sweep_steps, args.sweep_eval, args.eval_limit = 8, 4, 2, 16, 32
        args.batch_size = 4
    setup_torch(args.threads)
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m}; known: {', '.join(METHODS)}")
        if METHODS[m][0] == "zo" and args.samples % (METHODS[m][1] * args.contribs):
            raise SystemExit(f"--samples must be a multiple of peers*contribs for {m}")
    result = {"benchmark": "accuracy_compare", "config": vars(args), "status": "running"}

    def save():
        result["machine"] = machine_info(args.threads)
        write_results("accuracy_compare", result, args.out)

    t0 = time.perf_counter()
    b = Bench(args)
    result["trainable_parameters"] = b.replica.num_trainable
    result["trunk_seconds"] = b.trunk_seconds
    result["task"] = b.task.describe()
    zs = b.eval()
    result["zero_shot"] = {**zs, "seconds": time.perf_counter() - t0}
    ys = []
    for batch in b.task.eval_batches(64, args.eval_limit):
        ys += batch.labels.tolist()
    maj = max(set(ys), key=ys.count)
    result["majority_class"] = {"class": maj, "accuracy": ys.count(maj) / len(ys)}
    print(
        f"trainable {b.replica.num_trainable:,}; eval n={zs['n']}; zero-shot {zs}; majority {result['majority_class']}",
        flush=True,
    )
    save()

    # sweeps (first seed only), the same budget per candidate
    sub_n = min(args.sweep_eval, zs["n"])
    result["sweep"] = {
        "criterion": f"lowest eval loss on the first {sub_n} eval examples after {args.sweep_steps} batches",
        "zero_shot_subset": b.eval(args.sweep_eval),
        "runs": [],
    }
    prior_rows = []
    if args.prior_sweep:
        import json

        prior = json.loads(Path(args.prior_sweep).read_text())
        same = all(
            prior["config"].get(k) == getattr(args, k)
            for k in ("model", "dataset", "batch_size", "max_length", "trainable")
        )
        if same:
            prior_rows = [
                {"eps": prior["config"]["eps"] if row["family"] == "zo" else None, **row}
                for row in prior.get("sweep", {}).get("runs", [])
                if row["steps"] == args.sweep_steps and row["subset"]["n"] == sub_n
            ]

    def candidate(name: str, lr: float, eps: float | None) -> dict:
        for row in result["sweep"]["runs"] + prior_rows:
            if row["method"] == name and row["lr"] == lr and row["eps"] == eps:
                if row not in result["sweep"]["runs"]:
                    row = {**row, "from": args.prior_sweep}
                    result["sweep"]["runs"].append(row)
                return row
        t1 = time.perf_counter()
        r = run_method(b, name, lr, eps, args.sweep_steps, seeds[0], None)
        ev = b.eval(args.sweep_eval)
        row = {
            "family": METHODS[name][0],
            "method": name,
            "lr": lr,
            "eps": eps,
            "steps": args.sweep_steps,
            "subset": ev,
            "train_seconds": r["train_seconds"],
            "seconds": time.perf_counter() - t1,
            "train_losses": r["train_losses"],
        }
        print(f"  sweep {name} lr={lr:g} eps={eps}: subset {ev}", flush=True)
        result["sweep"]["runs"].append(row)
        save()
        return row

    def best(rows: list[dict]) -> dict:
        finite = [r for r in rows if math.isfinite(r["subset"]["loss"])]
        return min(finite, key=lambda r: r["subset"]["loss"]) if finite else rows[0]

    grid = lambda text: [float(x) for x in text.split(",") if x]  # noqa: E731
    chosen = {}
    zo = [m for m in methods if METHODS[m][0] == "zo"]
    if zo:
        # lr at the default eps, then eps at that lr, on the one-byte single peer; then every other
        # zeroth-order method gets its own lr sweep at that eps. N peers take N times fewer rounds
        # for the same samples, each averaging N times more estimates (c = -lr * g / n), so the best
        # lr need not be the same for every N: one shared lr would compare step sizes, not methods.
        if args.zo_lr is not None:
            zo_choice = {"lr": args.zo_lr, "eps": args.eps}
        else:
            first = "onebyte-1" if "onebyte-1" in zo else zo[0]
            lr = best([candidate(first, x, args.eps) for x in grid(args.zo_lrs)])["lr"]
            eps = best(
                [candidate(first, lr, e) for e in [args.eps] + [e for e in grid(args.zo_epss) if e != args.eps]]
            )["eps"]
            zo_choice = {"lr": lr, "eps": eps}
        for m in zo:
            chosen[m] = dict(zo_choice)
            if args.zo_lr is None and m != first:
                chosen[m]["lr"] = best([candidate(m, x, eps) for x in grid(args.zo_lrs)])["lr"]
    if "adam" in methods:
        lr = (
            args.adam_lr
            if args.adam_lr is not None
            else best([candidate("adam", x, None) for x in grid(args.adam_lrs)])["lr"]
        )
        chosen["adam"] = {"lr": lr, "eps": None}
    result["sweep"]["chosen"] = chosen
    print(f"chosen: {chosen}", flush=True)
    save()

    result["runs"] = []
    for seed in seeds:
        for m in methods:
            print(f"run {m} {chosen[m]} seed={seed}: {args.samples} batches", flush=True)
            r = run_method(b, m, chosen[m]["lr"], chosen[m]["eps"], args.samples, seed, args.eval_every)
            result["runs"].append(r)
            save()
    result["status"] = "done"
    result["total_seconds"] = time.perf_counter() - t0
    save()
    print(table(summary_rows(result), SUMMARY_HEADER))
    out = results_path("accuracy_compare", args.out)
    plot([result], str(out.with_suffix(".png")))


if __name__ == "__main__":
    main()
