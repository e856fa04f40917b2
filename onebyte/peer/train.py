"""Single-peer zeroth-order training: the whole step loop of onebyte on one machine, no network.

Each step is a round with one peer: draw ``contribs`` seeds, estimate g for each on its own
batch (two forward passes, weights untouched), encode g to the wire value, and apply the round
through the same update rule the swarm uses.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from onebyte import __version__
from onebyte.peer.checkpoint import save_checkpoint
from onebyte.peer.replica import Replica
from onebyte.settings import TASK_FIELDS, TrainSettings
from onebyte.zo import contribution_seed

log = logging.getLogger("onebyte")


@dataclass
class TrainConfig(TrainSettings):
    """The run settings (onebyte.settings: model, task, update rule, with their defaults) and this
    process's own: where it runs, how long, what it writes."""

    device: str = "cpu"
    steps: int = 100
    contribs: int = 1  # contributions (seeds) per step
    batch_size: int = 16
    seed: int = 0
    run_id: str = "local"
    peer_id: str = "peer0"
    eval_size: int | None = None  # limit held-out examples (None = all)
    train_size: int | None = None  # keep a hash-chosen subset of the training examples (None = all)
    eval_batch_size: int = 16
    checkpoint: str | None = None
    report: str | None = None
    progress: bool = True

    def validate(self) -> None:
        positive = {
            "steps": self.steps,
            "contribs": self.contribs,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "eval_batch_size": self.eval_batch_size,
        }
        for k, v in positive.items():
            if v < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
        for k in ("lr", "eps"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"--{k} must be a positive number, got {v}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")


def batch_indices(seed: int, peer_id: str, round_: int, index: int, pool: int, batch_size: int) -> list[int]:
    """Which training examples a contribution uses: deterministic, independent of timing."""
    key = int.from_bytes(peer_id.encode()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng([seed, key, round_, index])
    return rng.choice(pool, size=min(batch_size, pool), replace=False).tolist()


def build(cfg: TrainConfig):
    """Load model and task as ``cfg`` says and wrap the model in a Replica."""
    from onebyte.tasks.data import load_task
    from onebyte.tasks.loaded_model import trainable_parameters
    from onebyte.tasks.loading import load_model
    from onebyte.tasks.trunk import FrozenTrunk

    loaded = load_model(cfg.model, kind=cfg.model_kind, dtype=cfg.dtype, device=cfg.device, init_seed=cfg.init_seed)
    task = load_task(
        cfg.dataset,
        tokenizer=loaded.tokenizer,
        task=cfg.task,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        label_words=cfg.label_words,
        template=cfg.template,
        max_length=cfg.max_length,
        split_seed=cfg.seed,
        train_size=cfg.train_size,
    )
    params = trainable_parameters(loaded.model, cfg.trainable)
    trunk = (
        FrozenTrunk.for_params(loaded.model, params)
        if task.kind == "classification" and cfg.model_kind == "causal-lm"
        else None
    )
    if (
        trunk is not None
    ):  # only the head is trained: the frozen trunk runs once per example, not twice per contribution
        task.use_trunk(trunk)
        head = (
            trunk.norm_name
            if trunk.tail_names is None
            else f"{trunk.norm_name}, {trunk.tail_names[0]} and {trunk.tail_names[1]}"
        )
        log.info(
            "[%s] only %s %s trained: the frozen trunk runs once per example and is cached",
            cfg.peer_id,
            head,
            "is" if trunk.tail_names is None else "are",
        )
    replica = Replica(
        loaded.model,
        params,
        lr=cfg.lr,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        codec=cfg.codec,
        table_log2=cfg.table_log2,
        directions=cfg.directions,
        optimizer=cfg.optimizer,
        beta1=cfg.beta1,
        beta2=cfg.beta2,
        optim_eps=cfg.optim_eps,
    )
    return loaded, task, replica


def train(cfg: TrainConfig, built=None) -> dict:
    """Run ``cfg.steps`` single-peer steps; returns (and optionally writes) the JSON report."""
    cfg.validate()
    loaded, task, replica = built or build(cfg)
    model = replica.model

    def evaluate() -> dict:
        with torch.no_grad():
            return task.evaluate(model, batch_size=cfg.eval_batch_size, limit=cfg.eval_size)

    t0 = time.perf_counter()
    initial_hash = replica.sha256()
    before = evaluate()
    log.info(
        "[%s] step=0 eval %s trainable=%d hash=%s", cfg.peer_id, _fmt(before), replica.num_trainable, initial_hash[:12]
    )

    losses, made, skipped = [], 0, 0
    t_train = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.peer_id}", disable=not cfg.progress, unit="step")
    for step in bar:
        contributions, step_losses = [], []
        for k in range(cfg.contribs):
            seed = contribution_seed(cfg.run_id, cfg.peer_id, step, k)
            batch = replica.to_device(
                task.train_batch(batch_indices(cfg.seed, cfg.peer_id, step, k, task.num_train, cfg.batch_size))
            )
            g, lp, lm = replica.estimate_on(seed, batch, task.loss)
            wire = replica.encode(g)
            if wire is None:  # NaN/inf loss: this contribution is not made
                skipped += 1
                log.warning(
                    "[%s] step=%d contribution %d skipped: non-finite g (L+=%s, L-=%s)", cfg.peer_id, step, k, lp, lm
                )
                continue
            contributions.append((seed, replica.codec.decode(wire)))
            step_losses.append((lp + lm) / 2)
        replica.apply(contributions)
        made += len(contributions)
        losses.append(float(np.mean(step_losses)) if step_losses else float("nan"))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    train_seconds = time.perf_counter() - t_train

    after = evaluate()
    final_hash = replica.sha256()
    log.info("[%s] step=%d eval %s hash=%s", cfg.peer_id, cfg.steps, _fmt(after), final_hash[:12])
    report = {
        "onebyte_version": __version__,
        "protocol_version": replica.protocol_version,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "task": task.describe(),
        "trainable_parameters": replica.num_trainable,
        "steps": cfg.steps,
        "contributions_made": made,
        "contributions_skipped": skipped,
        "losses": losses,
        "eval_before": before,
        "eval_after": after,
        "initial_sha256": initial_hash,
        "final_sha256": final_hash,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    if cfg.checkpoint:
        meta = {
            k: getattr(cfg, k)
            for k in ("model", "run_id", *TASK_FIELDS, "model_kind", "dtype", "init_seed", "trainable")
        }
        info = save_checkpoint(cfg.checkpoint, replica.params, cfg.steps, meta)
        report["checkpoint"] = str(info.path)
        log.info("[%s] step=%d checkpoint written to %s", cfg.peer_id, cfg.steps, info.path)
    if cfg.report:
        write_json_atomic(cfg.report, report)
    return report


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def _fmt(ev: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items())
