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
* ``adam``: ``torch.optim.Adam`` on the same trainable tensors, loss = the task's own loss, one
  step per batch of one peer's batch sequence.

Wall time: ``train_seconds`` is the measured compute of this one process (serial: the N peers'
contributions are computed one after the other); ``swarm_seconds`` is what N peers working in
parallel would need = sum over rounds of (slowest peer's contributions in that round + the round's
apply), i.e. without network latency (see BENCHMARKS.md, swarm demo, for a real round's latency).

lr: a small sweep per family with the same budget (``--sweep-steps`` batches each, scored on the
first ``--sweep-eval`` eval examples, lowest eval loss wins): the zeroth-order lr is swept on
``onebyte-1`` and used for every zeroth-order method (same update rule), the Adam lr on Adam.
ε is fixed (``--eps``, MeZO's 1e-3). Evaluation: accuracy and loss on the first ``--eval-limit``
held-out examples (all by default) every ``--eval-every`` batches.

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

from _common import RESULTS, add_common_args, machine_info, setup_torch, table, write_results

import numpy as np
import torch


def evaluate(task, model, batch_size: int, limit: int | None) -> dict:
    correct = n = pos = 0
    loss = 0.0
    with torch.no_grad():
        for batch in task.eval_batches(batch_size, limit):
            logits = task.class_logits(model, batch)
            y = batch.labels.to(logits.device)
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(-1)
            correct += int((pred == y).sum())
            pos += int(pred.sum())
            n += len(y)
    return {"n": n, "accuracy": correct / n, "loss": loss / n, "predicted_positive": pos / n}


class Bench:
    """One loaded model/task/replica; every run starts from the same initial weights."""

    def __init__(self, args):
        from onebyte.peer.train import TrainConfig, build

        self.args = args
        cfg = TrainConfig(model=args.model, dataset=args.dataset, max_length=args.max_length, batch_size=args.batch_size,
                          trainable=args.trainable, dtype=args.dtype, eps=args.eps, lr=1e-5, progress=False,
                          text_column=args.text_column, label_column=args.label_column,
                          label_words=args.label_words.split(",") if args.label_words else None)
        self.loaded, self.task, self.replica = build(cfg)
        self.initial = [t.detach().clone() for _, t in self.replica.params]
        self.initial_sha = self.replica.sha256()

    def reset(self):
        with torch.no_grad():
            for (_, t), t0 in zip(self.replica.params, self.initial):
                t.copy_(t0)
        assert self.replica.sha256() == self.initial_sha

    def eval(self, limit=None):
        return evaluate(self.task, self.replica.model, self.args.eval_batch_size, self.args.eval_limit if limit is None else limit)

    def zo_run(self, *, peers: int, codec: str, lr: float, samples: int, seed: int, eval_every: int | None, eval_limit=None, tag="") -> dict:
        """``samples`` contributions in total by ``peers`` simulated peers, ``contribs`` each per round."""
        from onebyte.coordinator_free.agreement import decide_round, encode_codes
        from onebyte.dht.records import ContributionRecord
        from onebyte.peer.train import batch_indices
        from onebyte.zo import contribution_seed, make_codec

        self.reset()
        rep, task, k = self.replica, self.task, self.args.contribs
        rep.lr, rep.codec = float(lr), make_codec(codec)
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
                curve.append({"samples": done, "rounds": r + 1, "train_seconds": t_train, "swarm_seconds": t_swarm, **ev})
                print(f"    [{tag} lr={lr:g} seed={seed}] {done}/{samples} samples, round {r + 1}/{rounds}: acc {ev['accuracy']:.4f} "
                      f"loss {ev['loss']:.4f}  ({t_train:.0f} s train)", flush=True)
            elif (r + 1) % 10 == 0:
                print(f"    [{tag} lr={lr:g} seed={seed}] round {r + 1}/{rounds} ({t_train / max(done, 1):.2f} s/contribution)", flush=True)
        return {"method": tag, "peers": peers, "contribs_per_peer_per_round": k, "codec": codec, "lr": lr, "eps": rep.eps,
                "seed": seed, "samples": done, "rounds": rounds, "skipped_nonfinite": skipped, "train_seconds": t_train,
                "swarm_seconds": t_swarm, "curve": curve, "train_losses": losses, "g": gs, "final_sha256": rep.sha256()}

    def adam_run(self, *, lr: float, samples: int, seed: int, eval_every: int | None, eval_limit=None, tag="adam") -> dict:
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
                    curve.append({"samples": step + 1, "rounds": step + 1, "train_seconds": t_train, "swarm_seconds": t_train, **ev})
                    print(f"    [{tag} lr={lr:g} seed={seed}] {step + 1}/{samples}: acc {ev['accuracy']:.4f} loss {ev['loss']:.4f}  "
                          f"({t_train:.0f} s train)", flush=True)
                elif (step + 1) % 10 == 0:
                    print(f"    [{tag} lr={lr:g} seed={seed}] step {step + 1}/{samples} ({t_train / (step + 1):.2f} s/step)", flush=True)
        finally:
            opt.zero_grad(set_to_none=True)
            del opt
            for t in rep.model.parameters():
                t.requires_grad_(saved[id(t)])
        return {"method": tag, "peers": 1, "lr": lr, "seed": seed, "samples": samples, "rounds": samples, "train_seconds": t_train,
                "swarm_seconds": t_train, "curve": curve, "train_losses": losses, "final_sha256": rep.sha256()}


METHODS = {  # name -> (kind, peers, codec)
    "mezo-f32": ("zo", 1, "float32"),
    "onebyte-1": ("zo", 1, "log8:-8:8"),
    "onebyte-2": ("zo", 2, "log8:-8:8"),
    "onebyte-4": ("zo", 4, "log8:-8:8"),
    "adam": ("adam", 1, None),
}


def run_method(b: Bench, name: str, lr: float, samples: int, seed: int, eval_every, eval_limit=None) -> dict:
    kind, peers, codec = METHODS[name]
    if kind == "adam":
        return b.adam_run(lr=lr, samples=samples, seed=seed, eval_every=eval_every, eval_limit=eval_limit, tag=name)
    return b.zo_run(peers=peers, codec=codec, lr=lr, samples=samples, seed=seed, eval_every=eval_every, eval_limit=eval_limit, tag=name)


def plot(result: dict, png: str) -> None:
    """Accuracy against samples and against wall time (serial compute and ideal parallel swarm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    zs, maj = result["zero_shot"]["accuracy"], result["majority_class"]["accuracy"]
    colors = {"mezo-f32": "tab:blue", "onebyte-1": "tab:orange", "onebyte-2": "tab:green", "onebyte-4": "tab:red", "adam": "black"}
    methods = list(dict.fromkeys(r["method"] for r in result.get("runs", [])))
    for ax, x, label in zip(axes, ("samples", "train_seconds", "swarm_seconds"),
                            ("training batches (samples / batch size)", "wall time of this process, s (serial)",
                             "wall time with peers in parallel, s (no network)")):
        for m in methods:
            rs = [r for r in result["runs"] if r["method"] == m]
            for i, r in enumerate(rs):
                xs = [0] + [c[x] for c in r["curve"]]
                ys = [zs] + [c["accuracy"] for c in r["curve"]]
                ax.plot(xs, ys, "-o", ms=3, color=colors.get(m), alpha=1.0 if i == 0 else 0.5,
                        label=f"{m} (lr {r['lr']:g})" if i == 0 else None)
        ax.axhline(maj, ls=":", color="gray", label="majority class")
        ax.axhline(zs, ls="--", color="gray", label="zero-shot")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    c = result["config"]
    fig.suptitle(f"{c['model']} on {c['dataset']}, batch {c['batch_size']} x {c['max_length']} tokens, "
                 f"eval n={result['zero_shot']['n']}, seeds {c['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.set_defaults(max_length=32)
    p.add_argument("--dataset", default="drugreview")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-words", default=None, help="comma-separated, e.g. ' negative, positive'")
    p.add_argument("--trainable", default=None, help="regex over parameter names (all methods alike); default all")
    p.add_argument("--samples", type=int, default=160, help="training batches per method (contributions; Adam steps)")
    p.add_argument("--contribs", type=int, default=1, help="contributions per peer per round")
    p.add_argument("--eval-every", type=int, default=40, help="evaluate every this many batches")
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default="mezo-f32,onebyte-1,onebyte-2,onebyte-4,adam")
    p.add_argument("--zo-lrs", default="3e-5,1e-4,3e-4", help="zeroth-order lr sweep (on onebyte-1)")
    p.add_argument("--adam-lrs", default="1e-5,1e-4", help="Adam lr sweep")
    p.add_argument("--zo-lr", type=float, default=None, help="skip the zeroth-order sweep")
    p.add_argument("--adam-lr", type=float, default=None, help="skip the Adam sweep")
    p.add_argument("--sweep-steps", type=int, default=30)
    p.add_argument("--sweep-eval", type=int, default=96)
    p.add_argument("--prior-sweep", default=None, help="results JSON of an earlier run whose sweep runs (same --sweep-steps) count as candidates too")
    p.add_argument("--plot", default=None, help="only draw the PNG from an existing results JSON (this path) and exit")
    args = p.parse_args()
    if args.plot:
        import json

        plot(json.loads(Path(args.plot).read_text()), str(Path(args.plot).with_suffix(".png")))
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
    result["task"] = b.task.describe()
    zs = b.eval()
    result["zero_shot"] = {**zs, "seconds": time.perf_counter() - t0}
    ys = []
    for batch in b.task.eval_batches(64, args.eval_limit):
        ys += batch.labels.tolist()
    maj = max(set(ys), key=ys.count)
    result["majority_class"] = {"class": maj, "accuracy": ys.count(maj) / len(ys)}
    print(f"trainable {b.replica.num_trainable:,}; eval n={zs['n']}; zero-shot {zs}; majority {result['majority_class']}", flush=True)
    save()

    # lr sweeps (first seed only), same budget per family
    result["sweep"] = {"criterion": f"lowest eval loss on the first {args.sweep_eval} eval examples after {args.sweep_steps} batches",
                       "zero_shot_subset": b.eval(args.sweep_eval), "runs": []}
    chosen = {}
    for family, given, grid, name in (("zo", args.zo_lr, args.zo_lrs, "onebyte-1"), ("adam", args.adam_lr, args.adam_lrs, "adam")):
        if not any(METHODS[m][0] == family for m in methods):
            continue
        if given is not None:
            chosen[family] = given
            continue
        runs = []
        if args.prior_sweep:
            import json

            prior = json.loads(Path(args.prior_sweep).read_text()).get("sweep", {})
            for row in prior.get("runs", []):
                if row["family"] == family and row["steps"] == args.sweep_steps and row["subset"]["n"] == min(args.sweep_eval, zs["n"]):
                    row = {**row, "from": args.prior_sweep}
                    runs.append(row)
                    result["sweep"]["runs"].append(row)
        for lr in [float(x) for x in grid.split(",")] if grid else []:
            if any(r["lr"] == lr for r in runs):
                continue
            t1 = time.perf_counter()
            r = run_method(b, name, lr, args.sweep_steps, seeds[0], None)
            ev = b.eval(args.sweep_eval)
            row = {"family": family, "method": name, "lr": lr, "steps": args.sweep_steps, "subset": ev,
                   "train_seconds": r["train_seconds"], "seconds": time.perf_counter() - t1, "train_losses": r["train_losses"]}
            print(f"  sweep {name} lr={lr:g}: subset {ev}", flush=True)
            runs.append(row)
            result["sweep"]["runs"].append(row)
            save()
        finite = [r for r in runs if math.isfinite(r["subset"]["loss"])]
        chosen[family] = min(finite, key=lambda r: r["subset"]["loss"])["lr"]
    result["sweep"]["chosen"] = chosen
    print(f"chosen lr: {chosen}", flush=True)
    save()

    result["runs"] = []
    for seed in seeds:
        for m in methods:
            lr = chosen[METHODS[m][0]]
            print(f"run {m} lr={lr:g} seed={seed}: {args.samples} batches", flush=True)
            r = run_method(b, m, lr, args.samples, seed, args.eval_every)
            result["runs"].append(r)
            save()
    result["status"] = "done"
    result["total_seconds"] = time.perf_counter() - t0
    save()

    rows = [("majority class", "-", "-", "-", result["majority_class"]["accuracy"], "-", "-", "-"),
            ("zero-shot", "-", 0, 0, zs["accuracy"], "", zs["loss"], "-")]
    for m in methods:
        rs = [r for r in result["runs"] if r["method"] == m]
        acc = [r["curve"][-1]["accuracy"] for r in rs]
        rows.append((m, f"{rs[0]['lr']:g}", rs[0]["samples"], rs[0]["rounds"], float(np.mean(acc)),
                     f"{np.std(acc):.3f}" if len(acc) > 1 else "1 seed", float(np.mean([r["curve"][-1]["loss"] for r in rs])),
                     float(np.mean([r["swarm_seconds"] for r in rs]))))
    print(table(rows, ("method", "lr", "samples", "rounds", "accuracy", "spread", "eval loss", "swarm s")))
    out = Path(args.out) if args.out else RESULTS / "accuracy_compare.json"
    plot(result, str(out.with_suffix(".png")))


if __name__ == "__main__":
    main()
