"""(j) Scaling: S(N) under the stateful update rules, the exact swarm math without a network.

N peers, K contributions each per round (default 64), each peer on its own shard of the training
data (example i belongs to peer i mod N, as ``onebyte peer --shard``; in a run whose size changes,
mod the largest size). Every contribution is what a real peer makes: seed =
contribution_seed(run_id, peer_id, round, index), its batch = batch_indices(...) on the peer's
shard (batch 16), its direction from the run's noise table (the dense window at
tensor_offset(seed, name); for ``lowrank:r`` the factors A, B of onebyte.zo.directions on every
2-D tensor), g = (L+ - L-) / 2 eps, encoded to one byte with the codec and decoded. A round's
contributions, in canonical order (peer id, then index), go through ``Replica.apply``: today's
rule (``sgd``: the round's mean times lr), or protocol v3's Nesterov / Adam with their state, bit
for bit what every replica of such a swarm would hold.

What is not a peer's code path: the losses. Only the head is trained (the final norm, or the final
norm and the last block's feed-forward half), so the frozen trunk's output is computed once per
example (FrozenTrunk, as a peer caches it) and the head is then evaluated for many perturbed
copies in one batched operation (``Head``), with the same directions and the same eps; a
perturbed matrix product is x W^T + s eps x Z^T. Checked against ``Replica.estimate_on`` on real
batches: the same g to ~1e-4 (float rounding), far inside the codec's 9% steps.

S(N) = 160 / (rounds N peers need to reach the held-out loss that 1 peer reaches after 160
rounds of today's rule, lr 0.3), from the mean held-out loss over seeds after every round
(linear between rounds; 0 = never reached). A run whose held-out loss turns non-finite stops and
counts as diverged.

    python bench/scaling.py --config mr-norm --rules 'sgd:lr=0.3;adam:lr=0.1' --schedules '1;4;16;64;1@0,16@40,2@100'
    python bench/scaling.py --report bench/results/scaling-mr-norm.json ... --png bench/results/scaling.png

``--impl reference`` (exploration only, from before Replica had the stateful rules) applies the
same formulas in plain float32 torch ops on top of the v1/v2 rule; reported numbers use Replica.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import harness  # noqa: F401  (puts the repository root on sys.path)
from harness import log, machine_info, md_table, results_path, write_results
from onebyte.zo.optim import OPTIMIZERS

NORM = r"^model\.norm\.weight$"
TAIL = r"^model\.norm\.weight$|layers\.29\.(post_attention_layernorm|mlp)\."
CACHE = Path(harness.ROOT) / "runs" / "scaling-cache"


def features(dataset: str, train: int, held_out: int, max_length: int, model: str = "smollm2-135m") -> dict:
    """The frozen trunk's output for every training and held-out example, once, at the cache point of
    the norm + last-MLP head (the residual stream after the last block's attention, last position;
    onebyte.tasks.trunk.FrozenTrunk, the class a peer uses), kept on disk under runs/scaling-cache/."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{model}-{dataset}-{train}-{held_out}-{max_length}.pt"
    if path.exists():
        return torch.load(path)
    from onebyte.peer.train import TrainConfig, build

    loaded, task, replica = build(
        TrainConfig(
            model=model, dataset=dataset, trainable=TAIL, max_length=max_length, train_size=train, progress=False
        )
    )
    trunk = task.trunk
    assert trunk is not None and trunk.tail is not None
    out = {}
    for split, n in (("train", task.num_train), ("eval", min(held_out, task.num_eval))):
        # similar lengths together: padding costs the trunk most of its time otherwise
        order = sorted(range(n), key=lambda i: len(task._split(split)[i]))
        hs = {}
        for a in range(0, n, 16):
            idx = order[a : a + 16]
            b = task._make_batch(split, idx)
            fresh = trunk._fill(b, b.keys.tolist())
            for i, k in zip(idx, b.keys.tolist()):
                hs[i] = trunk.cache[k] if k in trunk.cache else fresh[k]
        labels = task.labels(split)[:n]
        out[split] = (torch.stack([hs[i] for i in range(n)]), torch.tensor(labels))
    m = loaded.model
    out = {
        "train_h": out["train"][0],
        "train_y": out["train"][1],
        "eval_h": out["eval"][0],
        "eval_y": out["eval"][1],
        "head": trunk.head.weight[task.label_token_ids].detach().clone(),
        "norm_eps": float(trunk.norm.variance_epsilon),
        "tail_eps": float(trunk.tail[0].variance_epsilon),
        "init": {n: t.detach().clone() for n, t in replica.params},
        "task": task.describe(),
        "label_words": task.label_words,
        "model": model,
        "act": m.config.hidden_act,
    }
    torch.save(out, path)
    return out


# ------------------------------------------------------------------------------------------------
# the trainable head on cached trunk outputs, evaluated for many perturbed copies at once


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm without its weight (float32, as the module computes it)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class Head:
    """The trained tensors of one configuration and the loss they give on cached trunk outputs.

    ``params`` are the Replica's own (name, tensor) pairs: the weights this evaluates are the ones
    Replica.apply writes. With only the final norm trained, the frozen last MLP half is folded into
    the features once. Perturbed losses use the run's noise table exactly as a peer's Perturbation /
    InForward does: the dense window at tensor_offset(seed, name) (row-major for a matrix), or for
    ``lowrank:r`` the factors A, B of onebyte.zo.directions (z = A B^T) on 2-D tensors; a perturbed
    matrix product is computed as x W^T + s eps x Z^T (the same function of the same z and eps)."""

    def __init__(self, feats: dict, params, noise, directions, eps: float):
        from onebyte.zo.directions import Directions

        self.params = dict(params)
        self.names = [n for n, _ in params]
        self.noise, self.eps = noise, float(eps)
        self.directions = Directions.parse(directions) if isinstance(directions, str) else directions
        self.head = feats["head"].float()
        self.neps, self.teps = feats["norm_eps"], feats["tail_eps"]
        self.mlp = any("mlp" in n for n in self.names)
        self.pre = {n: n.rsplit(".", 1)[0] for n in self.names}
        tr, ev = feats["train_h"].float(), feats["eval_h"].float()
        self.train_y, self.eval_y = feats["train_y"], feats["eval_y"]
        if self.mlp:
            self.train_h, self.eval_h = tr, ev
        else:  # the frozen tail, once: what the final norm sees
            init = feats["init"]
            self.train_h, self.eval_h = (_rms(h + self._tail(h, init), self.neps) for h in (tr, ev))
        self.train_x = _rms(self.train_h, self.teps) if self.mlp else None
        self._ftable = None

    # names of the tail's tensors
    N_NORM = "model.norm.weight"
    PA = "model.layers.29.post_attention_layernorm.weight"
    GATE, UP, DOWN = (f"model.layers.29.mlp.{p}_proj.weight" for p in ("gate", "up", "down"))

    def _tail(self, h, w):
        """The last block's feed-forward half at weights w (unperturbed): mlp(norm(h))."""
        x = _rms(h, self.teps) * w[self.PA]
        a = torch.nn.functional.silu(x @ w[self.GATE].t()) * (x @ w[self.UP].t())
        return a @ w[self.DOWN].t()

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Held-out logits at the current weights (h: cached trunk outputs of the split)."""
        w = self.params
        if self.mlp:
            h = _rms(h + self._tail(h, w), self.neps)
        return (h * w[self.N_NORM]) @ self.head.t()

    def eval_logits(self) -> torch.Tensor:
        return self.logits(self.eval_h)

    def table(self) -> torch.Tensor:
        """The noise table as float32, extended by its start so that every dense window is one view."""
        if self._ftable is None:
            longest = max(t.numel() for t in self.params.values())
            s = self.noise.signs.float()
            self._ftable = torch.cat([s, s[:longest]])
        return self._ftable

    def _vec(self, seeds, name: str, numel: int) -> torch.Tensor:
        from onebyte.zo.directions import windows
        from onebyte.zo.noise import tensor_offsets

        return windows(self.noise, tensor_offsets(seeds, name, self.noise.table_log2), 0, numel).float()

    def losses(self, seeds: list[int], idx: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(L+, L-) per seed, seed k on training rows idx[k] (a (K, batch) index tensor)."""
        lp, lm = [], []
        for a in range(0, len(seeds), chunk):
            p, m = self._losses(seeds[a : a + chunk], idx[a : a + chunk])
            lp.append(p)
            lm.append(m)
        return torch.cat(lp), torch.cat(lm)

    def _losses(self, seeds, idx):
        """idx: (K, B) rows, -1 = padding (a shard smaller than the batch gives a smaller batch)."""
        w, eps, K, B = self.params, self.eps, len(seeds), idx.shape[1]
        keep = (idx >= 0).float()
        idx = idx.clamp(min=0)

        def mean(ce):
            return (ce * keep).sum(1) / keep.sum(1)

        y = self.train_y[idx].reshape(-1)
        C = self.head.shape[0]
        zn = self._vec(seeds, self.N_NORM, w[self.N_NORM].numel())
        out = []
        if not self.mlp:
            x = self.train_h[idx]  # (K, B, d)
            for s in (1.0, -1.0):
                wn = torch.add(w[self.N_NORM], zn, alpha=s * eps)  # fl32(w + s eps z), as perturbed_copy
                lg = (x * wn[:, None, :]) @ self.head.t()
                out.append(mean(torch.nn.functional.cross_entropy(lg.reshape(-1, C), y, reduction="none").view(K, B)))
            return out
        h, xr = self.train_h[idx], self.train_x[idx]
        zpa = self._vec(seeds, self.PA, w[self.PA].numel())
        mats = {}
        if self.directions.lowrank:
            from onebyte.zo.directions import factor_offsets, windows

            r = self.directions.rank
            for n in (self.GATE, self.UP, self.DOWN):
                rows, cols = w[n].shape
                A = windows(self.noise, factor_offsets(self.noise, seeds, n, "a", r), 0, rows).float()
                Bf = windows(self.noise, factor_offsets(self.noise, seeds, n, "b", r), 0, cols).float()
                mats[n] = (A.view(K, r, rows), Bf.view(K, r, cols))

        def pert(x, n):
            """x Z_k^T for every k (x: (K, rows, in))."""
            if self.directions.lowrank:
                A, Bf = mats[n]
                return torch.bmm(torch.bmm(x, Bf.transpose(1, 2)), A)
            from onebyte.zo.noise import tensor_offsets

            rows, cols = w[n].shape
            tab, offs = self.table(), tensor_offsets(seeds, n, self.noise.table_log2).tolist()
            res = torch.empty(x.shape[0], x.shape[1], rows)
            for k, o in enumerate(offs):
                torch.mm(x[k], tab[o : o + rows * cols].view(rows, cols).t(), out=res[k])
            return res

        # both signs stacked along the rows: (K, 2B, .)
        sgn = torch.cat([torch.ones(B), -torch.ones(B)]).view(1, 2 * B, 1)
        wpa = w[self.PA] + sgn * eps * zpa[:, None, :]  # (K, 2B, d): fl32(w + s eps z) per row
        x = torch.cat([xr, xr], 1) * wpa
        gate = (x @ w[self.GATE].t()) + sgn * eps * pert(x, self.GATE)
        up = (x @ w[self.UP].t()) + sgn * eps * pert(x, self.UP)
        act = torch.nn.functional.silu(gate) * up
        o = (act @ w[self.DOWN].t()) + sgn * eps * pert(act, self.DOWN)
        hf = _rms(torch.cat([h, h], 1) + o, self.neps)
        wn = w[self.N_NORM] + sgn * eps * zn[:, None, :]
        lg = (hf * wn) @ self.head.t()  # (K, 2B, C)
        ce = torch.nn.functional.cross_entropy(
            lg.reshape(-1, C), torch.cat([y.view(K, B)] * 2, 1).reshape(-1), reduction="none"
        ).view(K, 2 * B)
        return [mean(ce[:, :B]), mean(ce[:, B:])]


# ------------------------------------------------------------------------------------------------
# update rules


@dataclass(frozen=True)
class Rule:
    """An agreed update rule: UpdateSettings' optimizer, lr, beta1, beta2, optim_eps."""

    optimizer: str = "sgd"
    lr: float = 0.3
    beta1: float = 0.9
    beta2: float = 0.99
    optim_eps: float = 1e-8

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``adam:lr=0.1,beta1=0.9,beta2=0.99,optim_eps=1e-8`` (omitted fields: the defaults)."""
        opt, _, rest = text.strip().partition(":")
        kw = {k.strip(): float(v) for k, v in (p.split("=") for p in rest.split(",") if p.strip())}
        if opt not in OPTIMIZERS:
            raise SystemExit(f"unknown optimizer {opt!r}")
        return cls(opt, **kw)

    @property
    def label(self) -> str:
        if self.optimizer == "sgd":
            return f"sgd lr={self.lr:g}"
        if self.optimizer == "nesterov":
            return f"nesterov lr={self.lr:g} b={self.beta1:g}"
        return f"adam lr={self.lr:g} b1={self.beta1:g} b2={self.beta2:g} eps={self.optim_eps:g}"


def replica_has_optimizer() -> bool:
    import inspect

    from onebyte.peer.replica import Replica

    return "optimizer" in inspect.signature(Replica.__init__).parameters


class Reference:
    """EXPLORATION ONLY (until Replica has the stateful rules): the lead's Nesterov / Adam formulas
    in plain float32 torch ops (torch.sqrt, not the exact sequence) on the round's mean estimate G,
    which is taken from the v1/v2 rule itself (a round applied with lr 1 to zero tensors is -G)."""

    def __init__(self, replica, rule: Rule):
        self.rep, self.rule, self.t = replica, rule, 0
        self.scratch = [(n, torch.zeros_like(t)) for n, t in replica.params]
        self.b = [torch.zeros_like(t) for _, t in replica.params]
        self.v = [torch.zeros_like(t) for _, t in replica.params]

    def apply(self, contributions) -> None:
        from onebyte.zo import apply_round
        from onebyte.zo.exact import apply_round_exact

        if not contributions:
            return
        for _, s in self.scratch:
            s.zero_()
        rep, rule = self.rep, self.rule
        if rep.directions.lowrank:
            apply_round_exact(self.scratch, contributions, 1.0, rep.noise, rep.directions, rep.exact_rule)
        else:
            apply_round(self.scratch, contributions, 1.0, rep.noise)
        self.t += 1
        b1, b2 = rule.beta1, rule.beta2
        for (_, p), (_, s), b, v in zip(rep.params, self.scratch, self.b, self.v):
            G = -s
            if rule.optimizer == "nesterov":
                b.mul_(b1).add_(G)
                p.sub_(rule.lr * (G + b1 * b))
            else:
                b.mul_(b1).add_(G, alpha=1 - b1)
                v.mul_(b2).add_(G * G, alpha=1 - b2)
                mhat = b / (1 - b1**self.t)
                vhat = v / (1 - b2**self.t)
                p.sub_(rule.lr * mhat / (vhat.sqrt() + rule.optim_eps))

    def sha256(self) -> str:
        return self.rep.sha256()


def make_rule(model, params, rule: Rule, eps: float, directions: str, codec: str, impl: str):
    """What applies a round: a Replica (today's rule, or the stateful rules once Replica has them)
    or, for exploration, a Reference on top of a lr-1 Replica."""
    from onebyte.peer.replica import Replica

    if rule.optimizer == "sgd" or impl == "replica":
        kw = {}
        if rule.optimizer != "sgd":
            kw = dict(optimizer=rule.optimizer, beta1=rule.beta1, beta2=rule.beta2, optim_eps=rule.optim_eps)
        return Replica(model, params, lr=rule.lr, eps=eps, codec=codec, directions=directions, **kw)
    return Reference(Replica(model, params, lr=1.0, eps=eps, codec=codec, directions=directions), rule)


# ------------------------------------------------------------------------------------------------
# one run


def parse_schedule(text: str) -> list[tuple[int, int]]:
    """``16`` (16 peers throughout) or ``1@0,16@40,2@100`` (N peers from round r on)."""
    if "@" not in text:
        return [(0, int(text))]
    out = sorted((int(r), int(n)) for n, r in (p.split("@") for p in text.split(",")))
    if out[0][0] != 0:
        raise SystemExit(f"schedule {text!r} must start at round 0")
    return out


def peers_at(schedule, r: int) -> int:
    return [n for start, n in schedule if start <= r][-1]


def peer_id(i: int) -> str:
    return hashlib.sha256(f"peer{i}".encode()).hexdigest()  # a swarm's ids are hex public keys


def simulate(
    head: Head,
    applier,
    schedule,
    *,
    seed: int,
    rounds: int,
    contribs: int,
    batch: int,
    codec: str,
    eval_every: int,
    tag: str,
    stale: int = 0,
    warmup: tuple[int, int] = (0, 0),
    robust=None,
) -> dict:
    """``rounds`` rounds of the swarm math; the held-out loss after every round, the scores every
    ``eval_every``. Stops at the first non-finite held-out loss (diverged). With ``stale`` = s, round r's
    contributions are made on weights that lack rounds r-s..r-1 (a live swarm's peers estimate round r while
    earlier rounds settle, and work ahead): each round is applied s rounds after it is estimated. With ``warmup`` =
    (R, k), the first R rounds carry only k contributions per peer (a live peer's first rounds, while it runs its
    examples through the frozen trunk once). ``robust`` (a RobustRule): §15's clip applied to each round's decoded
    values before the update, as a peer's round set does (its cap is not modelled: honest rounds stay under it)."""
    import numpy as np

    from onebyte.coordinator_free.agreement import clip_limit
    from onebyte.peer.train import batch_indices
    from onebyte.tasks.metrics import classification_scores
    from onebyte.zo import contribution_seed, make_codec

    codec_ = make_codec(codec)
    run_id = f"scaling-{seed}"
    nmax = max(n for _, n in schedule)
    ids = [peer_id(i) for i in range(nmax)]
    ntrain = len(head.train_y)
    # peer j's shard: the examples i with i mod nmax = j (as `onebyte peer --shard j/nmax`)
    pools = {p: np.array([i for i in range(ntrain) if i % nmax == j]) for j, p in enumerate(ids)}
    ey = head.eval_y

    def evaluate(r, full):
        lg = head.eval_logits().double()
        loss = float(torch.nn.functional.cross_entropy(lg, ey))
        row = {"round": r, "loss": loss}
        if full and math.isfinite(loss):
            sc = classification_scores(lg.numpy(), ey.numpy())
            row.update(accuracy=sc["accuracy"], balanced_accuracy=sc["balanced_accuracy"])
        return row

    losses, evals = [], []
    first = evaluate(0, True)
    losses.append(first["loss"])
    evals.append(first)
    t0, t_est, t_apply = time.perf_counter(), 0.0, 0.0
    skipped, diverged, peers_seen = 0, False, []
    pending: list[list] = []  # estimated rounds not yet applied (stale > 0)
    clipped, total = 0, 0
    for r in range(rounds + stale):
        if r >= rounds:  # the last rounds' estimates, applied after the loop's own rounds
            tb = time.perf_counter()
            applier.apply(pending.pop(0))
            t_apply += time.perf_counter() - tb
            continue
        n = peers_at(schedule, r)
        peers_seen.append(n)
        ta = time.perf_counter()
        seeds, rows = [], []
        for p in sorted(ids[:n]):  # canonical order: peer, then index
            pool = pools[p]
            for index in range(warmup[1] if r < warmup[0] else contribs):
                seeds.append(contribution_seed(run_id, p, r, index))
                pick = pool[batch_indices(seed, p, r, index, len(pool), batch)]
                rows.append(np.pad(pick, (0, batch - len(pick)), constant_values=-1))
        lp, lm = head.losses(seeds, torch.from_numpy(np.stack(rows)))
        g = ((lp.double() - lm.double()) / (2.0 * head.eps)).tolist()
        contributions = []
        total += len(seeds)
        for s, gk in zip(seeds, g):
            v = codec_.roundtrip(gk)  # what the peer sends, decoded as every peer decodes it
            if v is None:
                skipped += 1
            else:
                contributions.append((s, v))
        if robust is not None and contributions:
            lim = clip_limit([v for _, v in contributions], robust)
            if lim is not None:
                clipped += sum(1 for _, v in contributions if abs(v) > lim)
                contributions = [(sd, math.copysign(lim, v) if abs(v) > lim else v) for sd, v in contributions]
        tb = time.perf_counter()
        pending.append(contributions)
        if len(pending) > stale:
            applier.apply(pending.pop(0))
        tc = time.perf_counter()
        t_est += tb - ta
        t_apply += tc - tb
        row = evaluate(r + 1, (r + 1) % eval_every == 0 or r == rounds - 1)
        losses.append(row["loss"])
        if len(row) > 2:
            evals.append(row)
        if not math.isfinite(row["loss"]):
            diverged = True
            break
        if (r + 1) % 20 == 0:
            log(
                f"[{tag}] round {r + 1}/{rounds}: N={n} held-out loss {row['loss']:.4f} "
                f"({t_est:.0f} s estimates, {t_apply:.0f} s apply)"
            )
    return {
        "losses": losses,
        "evals": evals,
        "diverged": diverged or not all(math.isfinite(x) for x in losses),
        "max_loss": max(x if math.isfinite(x) else float("inf") for x in losses),
        "skipped_nonfinite": skipped,
        "clipped_share": clipped / max(1, total),
        "seconds": time.perf_counter() - t0,
        "estimate_seconds": t_est,
        "apply_seconds": t_apply,
        "final_sha256": applier.sha256(),
    }


# ------------------------------------------------------------------------------------------------
# configurations, the sweep, the report

CONFIGS = {
    "mr-norm": {"dataset": "mr", "trainable": NORM, "directions": "dense"},
    # today's rule at lr 0.3 diverges with the MLP trained: the lr that BENCHMARKS.md (h) tuned for it (v1),
    # and that lr / 4 for lowrank:4 (a rank-r z has E[z z^T] = r I)
    "mr-mlp": {"dataset": "mr", "trainable": TAIL, "directions": "dense", "baseline_lr": 0.01},
    "mr-mlp-lowrank4": {"dataset": "mr", "trainable": TAIL, "directions": "lowrank:4", "baseline_lr": 0.0025},
    "trec-norm": {"dataset": "trec", "trainable": NORM, "directions": "dense"},
    # `make demo`'s data: 4 peers x 400 training examples, all 500 held-out examples
    "mr-norm-demo": {"dataset": "mr", "trainable": NORM, "directions": "dense", "train": 1600, "held_out": 500},
}
BASELINE = Rule("sgd", 0.3)


def baseline_label(result: dict) -> str:
    """Today's rule at its tuned lr for the configuration (0.3 for the final norm)."""
    return Rule("sgd", CONFIGS[result["config"]["config"]].get("baseline_lr", BASELINE.lr)).label


def run_key(r: dict) -> tuple:
    return (
        r["config"],
        r["rule"],
        r["schedule"],
        r["seed"],
        r["impl"],
        r.get("contribs_per_peer", 64),
        r.get("stale", 0),
    )


def column(r: dict) -> str:
    """A run's swarm: its schedule, and K, staleness, warm-up and §15's clip where there are any."""
    k, s, w = r.get("contribs_per_peer", 64), r.get("stale", 0), r.get("warmup", [0, 0])
    return (
        r["schedule"]
        + ("" if k == 64 else f" K={k}")
        + (f" stale {s}" if s else "")
        + (f" warm-up {w[0]} rounds of {w[1]}" if w[0] else "")
        + "".join(f" {name.replace('_', ' ')} {v:g}" for name, v in sorted((r.get("clip") or {}).items()))
    )


def sweep(args) -> None:
    from onebyte.tasks.loaded_model import trainable_parameters
    from onebyte.tasks.loading import load_model

    cfg = CONFIGS[args.config]
    path = results_path(f"scaling-{args.config}" + (f"-{args.tag}" if args.tag else ""), args.out)
    result = json.loads(path.read_text()) if path.exists() else {"benchmark": "scaling", "runs": []}
    feats = features(cfg["dataset"], cfg.get("train", args.train), cfg.get("held_out", args.held_out), args.max_length)
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    params = trainable_parameters(loaded.model, cfg["trainable"])
    init = {n: feats["init"][n] for n, _ in params}
    impl = args.impl
    if impl == "auto":
        impl = "replica" if replica_has_optimizer() else "reference"
    result.update(
        config={**vars(args), **cfg, "impl": impl},
        trainable_parameters=sum(t.numel() for _, t in params),
        task=feats["task"],
    )
    done = {run_key(r) for r in result["runs"]}
    warmup = tuple(int(x) for x in args.warmup.split(":"))
    clip = {k: v for k, v in (("clip_abs", args.clip_abs), ("clip_median", args.clip_median)) if v is not None}
    robust = None
    if clip:
        from onebyte.coordinator_free.agreement import RobustRule

        robust = RobustRule(**clip)
    clip_key = tuple(sorted(clip.items()))
    rules = [Rule.parse(x) for x in args.rules.split(";") if x.strip()]
    for schedule_text in args.schedules.split(";"):
        schedule = parse_schedule(schedule_text)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for rule in rules:
                rimpl = "replica" if rule.optimizer == "sgd" else impl
                key = (args.config, rule.label, schedule_text, seed, rimpl, args.contribs, args.stale, warmup, clip_key)
                if key in done:
                    continue
                with torch.no_grad():
                    for n, t in params:
                        t.copy_(init[n])
                applier = make_rule(loaded.model, params, rule, args.eps, cfg["directions"], args.codec, rimpl)
                head = Head(
                    feats,
                    params,
                    applier.noise if hasattr(applier, "noise") else applier.rep.noise,
                    cfg["directions"],
                    args.eps,
                )
                tag = f"{args.config} {rule.label} N={schedule_text} seed={seed} {rimpl}"
                log(f"[{tag}] start")
                out = simulate(
                    head,
                    applier,
                    schedule,
                    seed=seed,
                    rounds=args.rounds,
                    contribs=args.contribs,
                    batch=args.batch,
                    codec=args.codec,
                    eval_every=args.eval_every,
                    tag=tag,
                    stale=args.stale,
                    warmup=warmup,
                    robust=robust,
                )
                log(
                    f"[{tag}] done in {out['seconds']:.0f} s: held-out loss {out['losses'][-1]:.4f}, balanced "
                    f"accuracy {out['evals'][-1].get('balanced_accuracy', float('nan')):.3f}"
                    + (" DIVERGED" if out["diverged"] else "")
                )
                result["runs"].append(
                    {
                        "config": args.config,
                        "rule": rule.label,
                        "rule_settings": asdict(rule),
                        "schedule": schedule_text,
                        "seed": seed,
                        "impl": rimpl,
                        "contribs_per_peer": args.contribs,
                        "stale": args.stale,
                        "clip": clip,
                        "warmup": list(warmup),
                        "batch": args.batch,
                        **out,
                    }
                )
                result["machine"] = machine_info(args.threads)
                write_results("scaling", result, str(path))


def speedup(losses: list[float], target: float) -> float:
    """rounds_baseline / rounds this curve needs to reach ``target`` (linear between rounds); 0 if never."""
    for r in range(1, len(losses)):
        if losses[r] <= target:
            a, b = losses[r - 1], losses[r]
            frac = 1.0 if a == b else (a - target) / (a - b)
            return BASELINE_ROUNDS[0] / (r - 1 + frac)
    return 0.0


BASELINE_ROUNDS = [160]


def speedup_stay(losses: list[float], target: float) -> float:
    """As speedup, but from the last crossing: the first round after which the curve stays at or
    below ``target`` (a noisy curve that dips below it once and comes back up does not count)."""
    r0 = max(r for r in range(len(losses)) if not losses[r] <= target)  # round 0 is above
    if r0 == len(losses) - 1:
        return 0.0
    a, b = losses[r0], losses[r0 + 1]
    return BASELINE_ROUNDS[0] / (r0 + (a - target) / (a - b))


def mean_losses(runs: list[dict]) -> list[float]:
    n = min(len(r["losses"]) for r in runs)
    return [sum(r["losses"][i] for r in runs) / len(runs) for i in range(n)]


def summarize(result: dict) -> dict:
    """S(N) per (rule, implementation, schedule) against today's rule at N = 1 (mean curves over seeds)."""
    runs = result["runs"]
    label = baseline_label(result)
    base = [r for r in runs if r["rule"] == label and column(r) == "1" and r["impl"] == "replica"]
    if base:
        rounds = min(len(r["losses"]) for r in base) - 1
        target = mean_losses(base)[rounds]
    else:  # no baseline in these files (the demo's data): balanced accuracy only
        rounds, target = min(len(r["losses"]) for r in runs) - 1, float("-inf")
    BASELINE_ROUNDS[0] = rounds
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["rule"], r["impl"], column(r)), []).append(r)
    rows = []
    for (rule, impl, sched), rs in groups.items():
        curve = mean_losses(rs)
        fin = [r["evals"][-1] for r in rs]
        rows.append(
            {
                "rule": rule,
                "impl": impl,
                "schedule": sched,
                "seeds": sorted(r["seed"] for r in rs),
                "S": speedup(curve, target) if all(not r["diverged"] for r in rs) else 0.0,
                "S_stay": speedup_stay(curve, target) if all(not r["diverged"] for r in rs) else 0.0,
                "S_per_seed": [speedup(r["losses"], target) for r in rs],
                "final_loss": curve[-1],
                "rounds": len(curve) - 1,
                "balanced_accuracy": sum(e.get("balanced_accuracy", float("nan")) for e in fin) / len(fin),
                "accuracy": sum(e.get("accuracy", float("nan")) for e in fin) / len(fin),
                "diverged": sum(bool(r["diverged"]) for r in rs),
                "max_loss": max(r["max_loss"] for r in rs),
                "initial_loss": rs[0]["losses"][0],
                "seconds": sum(r["seconds"] for r in rs) / len(rs),
            }
        )
    if not base:  # no S without the baseline
        for row in rows:
            row.update(S=None, S_stay=None, S_per_seed=None)
    return {"target_loss": target if base else None, "baseline_rounds": rounds, "rows": rows}


def report(paths: list[str], png: str | None) -> None:
    """Merge the results files of each configuration (runs keyed by config, rule, schedule, seed,
    impl), print the S(N) tables and write bench/results/scaling-summary.json (and the figure)."""
    merged: dict = {}
    for p in paths:
        if not Path(p).exists():
            print(f"{p}: not there (yet)")
            continue
        result = json.loads(Path(p).read_text())
        if result.get("benchmark") != "scaling" or "runs" not in result:
            continue  # another benchmark's file, or the summary itself
        name = result["config"]["config"]
        m = merged.setdefault(name, {**result, "runs": [], "files": []})
        keys = {run_key(r) for r in m["runs"]}
        m["runs"] += [r for r in result["runs"] if run_key(r) not in keys]
        m["files"].append(p)
    out = {"benchmark": "scaling", "configs": {}}
    for name, result in merged.items():
        summary = summarize(result)
        out["configs"][name] = {
            "files": result["files"],
            "trainable_parameters": result["trainable_parameters"],
            "settings": {k: result["config"].get(k) for k in ("dataset", "trainable", "directions", "eps", "codec")},
            **summary,
        }
        print(
            f"\n{name}: target held-out loss {summary['target_loss'] or float('nan'):.4f} ({baseline_label(result)}, "
            f"N = 1, round {summary['baseline_rounds']}); S (from the last crossing, where different) / balanced "
            "accuracy at the last round (seeds)"
        )
        scheds = sorted(
            {r["schedule"] for r in summary["rows"]}, key=lambda s: ("@" in s, int(s.split("@")[0].split()[0]), s)
        )
        table_rows = {}
        for row in summary["rows"]:
            table_rows.setdefault((row["rule"], row["impl"]), {})[row["schedule"]] = row
        head = ["rule", "impl"] + [f"N={s}" for s in scheds]
        lines = []
        order = sorted(table_rows, key=lambda k: (not k[0].startswith("sgd"), -len(table_rows[k]), k))
        for rule, impl in order:  # today's rule, then the rules run at the most swarm sizes
            cells = table_rows[(rule, impl)]
            line = [rule, impl]
            for s in scheds:
                c = cells.get(s)
                if c is None:
                    line.append("")
                    continue
                if c["S"] is None:
                    txt = "div" if c["diverged"] else "-"
                else:
                    never = f"<{summary['baseline_rounds'] / c['rounds']:g}"  # not reached in the rounds run
                    txt = "div" if c["diverged"] else (never if c["S"] == 0 else f"{c['S']:.1f}")
                    txt += "" if c["diverged"] or abs(c["S_stay"] - c["S"]) < 0.05 else f" ({c['S_stay']:.1f})"
                rounds = "" if c["rounds"] == summary["baseline_rounds"] else f", {c['rounds']} rounds"
                line.append(f"{txt} / {c['balanced_accuracy']:.3f} ({len(c['seeds'])}{rounds})")
            lines.append(line)
        print(md_table(lines, head))
    write_results("scaling-summary", out)
    if png:
        plot(out, png)


def plot(summary: dict, png: str) -> None:
    """S(N) against N per rule, one panel per configuration (S < 1, never reached, drawn at 0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel = ["mr-norm", "trec-norm", "mr-mlp-lowrank4", "mr-mlp"]
    configs = {  # a panel where some rule has S at two swarm sizes or more
        name: s
        for name, s in sorted(summary["configs"].items(), key=lambda kv: panel.index(kv[0]) if kv[0] in panel else 9)
        if s["target_loss"] is not None
        and max(sum(r["rule"] == x["rule"] and r["schedule"].isdigit() for r in s["rows"]) for x in s["rows"]) > 1
    }
    names = sorted({r["rule"] for s in configs.values() for r in s["rows"]}, key=lambda x: (not x.startswith("sgd"), x))
    color = {rule: f"C{i % 10}" for i, rule in enumerate(names)}  # one colour per rule in every panel
    fig, axes = plt.subplots(1, len(configs), figsize=(5.2 * len(configs), 4.4), squeeze=False)
    for ax, (name, s) in zip(axes[0], configs.items()):
        rules = {}
        for row in s["rows"]:
            if row["schedule"].isdigit() and row["impl"] == "replica":
                rules.setdefault(row["rule"], []).append(row)
        for rule, rows in rules.items():
            if len(rows) < 2:
                continue
            rows = sorted(rows, key=lambda r: int(r["schedule"]))
            ax.plot(
                [int(r["schedule"]) for r in rows],
                [max(r["S"], 0.5) for r in rows],
                "-o",
                ms=4,
                label=rule,
                color=color[rule],
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.axhline(1, color="gray", ls=":")
        ax.set_xlabel("peers N (64 contributions each per round)")
        ax.set_ylabel("S(N) (not reached: drawn at 0.5)")
        ax.set_title(
            f"{name} ({s['trainable_parameters']:,} trained)\nS = 160 / rounds to today's N=1 round-160 loss",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mr-norm", choices=sorted(CONFIGS))
    p.add_argument("--rules", default="sgd:lr=0.3", help="';'-separated, e.g. 'sgd:lr=0.3;adam:lr=0.1,beta2=0.99'")
    p.add_argument(
        "--schedules", default="1;4;16;64", help="';'-separated peer counts or schedules like 1@0,16@40,2@100"
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=160)
    p.add_argument("--contribs", type=int, default=64, help="contributions per peer per round (K)")
    p.add_argument(
        "--stale",
        type=int,
        default=0,
        help="round r's contributions are made on weights lacking the previous N rounds (a live swarm's work-ahead)",
    )
    p.add_argument(
        "--warmup",
        default="0:0",
        metavar="R:K",
        help="the first R rounds carry only K contributions per peer (a live peer's trunk-cache warm-up)",
    )
    p.add_argument("--clip-median", type=float, default=None, help="§15's median clip on every round (m)")
    p.add_argument("--clip-abs", type=float, default=None, help="§15's absolute clip on every round (A)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--held-out", type=int, default=300)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--codec", default="log8:-8:8")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument(
        "--impl",
        default="auto",
        choices=("auto", "replica", "reference"),
        help="stateful rules through Replica (exact) or the float reference (exploration)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default=None, help="results go to bench/results/scaling-<config>-<tag>.json")
    p.add_argument("--out", default=None)
    p.add_argument("--report", nargs="+", default=None, metavar="JSON", help="only summarize these results")
    p.add_argument("--png", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.report:
        report(args.report, args.png)
        return
    sweep(args)


if __name__ == "__main__":
    main()
