"""Joining a run: find its manifest (or create it), load model and data to match, and check that
this peer starts from exactly the run's initial weights.

A restart keeps the manifest it joined with (pinned in its checkpoint directory), whatever was
published under the run id since; ``--run-creator`` makes only that key's manifest the run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from onebyte.coordinator_free.manifest import RunManifest, parse_manifest, pick_manifest, refusal, tied_names
from onebyte.dht.client import DHTUnavailable
from onebyte.peer.node import Node
from onebyte.peer.replica import Replica
from onebyte.peer.train import TrainConfig, build, write_json_atomic
from onebyte.settings import SwarmConfig, agreed_fields, default_manifest_fields, train_fields
from onebyte.tasks.loaded_model import LoadedModel
from onebyte.tasks.pretrained import warm_imports
from onebyte.tasks.task import Task

log = logging.getLogger("onebyte.peer")

HASH_SECONDS = 60.0  # hashes about every this many seconds by default (a DHT operation costs kilobytes: BENCHMARKS.md)


class ManifestConflict(ValueError):
    pass


@dataclass
class JoinedRun:
    """A run this peer joined: its manifest, and the model and data built to match it."""

    creator: str
    manifest: RunManifest
    loaded: LoadedModel  # the model, its tokenizer and config (what onebyte export saves)
    task: Task
    replica: Replica
    pool: list[int]  # this peer's training examples (its shard)
    before: dict | None = None  # the creator's held-out scores before the clock started


def train_config(settings: dict, cfg: SwarmConfig) -> TrainConfig:
    """The model/data/update settings of a run (a manifest's or a creator's) plus this peer's own."""
    return TrainConfig(**train_fields(settings), device=cfg.device, seed=cfg.seed, progress=False)


def ties(replica: Replica) -> dict[str, list[str]]:
    """The names each trainable tensor also goes by (the manifest's ``ties``, PROTOCOL §1)."""
    return tied_names(replica.model.named_parameters(remove_duplicate=False), [n for n, _ in replica.params])


def evaluate(task, replica: Replica, cfg: SwarmConfig, node: Node, applied: int, limit: int | None = None) -> dict:
    """Held-out scores of the replica as it is now (logged, and shown on the metrics)."""
    import torch

    with torch.no_grad():
        ev = task.evaluate(replica.model, batch_size=cfg.eval_batch_size, limit=limit or cfg.eval_size)
    node.metrics.on_eval(ev.get("accuracy"), ev.get("loss"), ev.get("balanced_accuracy"))
    log.info(
        "[%s] round=%d eval %s",
        node.tag,
        applied,
        " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()),
    )
    return ev


class Joiner:
    def __init__(self, node: Node, cfg: SwarmConfig):
        self.node, self.cfg = node, cfg

    def read_manifest(self) -> tuple[str, RunManifest] | None:
        """The run's manifest from the DHT: the earliest one, or only the named creator's."""
        cfg, tag = self.cfg, self.node.tag
        # a protocol this peer does not speak is kept aside, to refuse it clearly
        found = self.node.client.read_manifests(cfg.run_id, parse_manifest)
        if cfg.run_creator:
            found = {k: m for k, m in found.items() if k == cfg.run_creator}
        picked = pick_manifest(found, cfg.run_id)
        if picked is None and refusal(cfg.run_id, found):
            raise ManifestConflict(refusal(cfg.run_id, found))
        distinct = {
            m.model_dump_json() for m in found.values() if isinstance(m, RunManifest) and m.run_id == cfg.run_id
        }
        if picked is not None and len(distinct) > 1:
            log.warning(
                "[%s] round=-1 %d different manifests claim run %s; taking the earliest, by %s (pin one with "
                "--run-creator KEY)",
                tag,
                len(found),
                cfg.run_id,
                picked[0][:16],
            )
        return picked

    def pinned_path(self) -> Path | None:
        return Path(self.cfg.checkpoint_dir) / self.cfg.run_id / "manifest.json" if self.cfg.checkpoint_dir else None

    def read_pinned(self) -> tuple[str, RunManifest] | None:
        """The manifest this peer joined with before (its checkpoint directory): a restart keeps it,
        whatever was published under the run id since."""
        path = self.pinned_path()
        if path is None or not path.exists():
            return None
        try:
            pinned = json.loads(path.read_text())
            creator, manifest = str(pinned["creator"]), RunManifest(**pinned["manifest"])
            if manifest.run_id != self.cfg.run_id:
                raise ValueError(f"it is for run {manifest.run_id!r}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = path.with_name(path.name + ".refused")
            path.replace(aside)
            log.warning(
                "[%s] round=-1 pinned manifest %s unreadable (moved to %s): %s", self.node.tag, path, aside.name, e
            )
            return None
        if self.cfg.run_creator and creator != self.cfg.run_creator:
            raise ManifestConflict(
                f"{path} pins run {self.cfg.run_id!r} to creator {creator[:16]}, not --run-creator "
                f"{self.cfg.run_creator[:16]}; use another --checkpoint-dir for another run"
            )
        return creator, manifest

    def pin(self, creator: str, manifest: RunManifest) -> None:
        path = self.pinned_path()
        if path is not None:
            write_json_atomic(path, {"creator": creator, "manifest": manifest.model_dump()})

    def create(self) -> tuple[RunManifest, tuple, dict | None]:
        """A new run from this peer's settings: publish its manifest; returns it, the built model and
        the held-out scores before training (``--evaluate``)."""
        cfg, node = self.cfg, self.node
        settings = default_manifest_fields() | {k: v for k, v in cfg.local.items() if v is not None}
        built = build(train_config(settings, cfg))
        before = evaluate(built[1], built[2], cfg, node, -1) if cfg.evaluate else None  # before the clock starts
        now = time.time()
        r = float(settings["round_seconds"])
        manifest = RunManifest(
            run_id=cfg.run_id,
            created_at=now,
            start_time=now + cfg.start_delay,
            round_seconds=r,
            publish_margin=min(max(0.15 * r, 1.0), 0.5 * r),
            settle_seconds=max(0.2 * r, 3.0),
            hash_every=int(settings.get("hash_every") or max(1, math.ceil(HASH_SECONDS / r))),
            protocol_version=built[2].protocol_version,
            initial_sha256=built[2].sha256(),
            task_description=built[1].describe(),
            ties=ties(built[2]),
            **agreed_fields(settings, but=("round_seconds", "hash_every")),
        )
        if not node.client.publish_manifest(cfg.run_id, manifest.record(), now + 30 * 24 * 3600):
            raise DHTUnavailable("could not store the run manifest in the DHT")
        log.info("[%s] round=-1 created run %s starting in %.0fs", node.tag, manifest.run_id, cfg.start_delay)
        if manifest.allowed_peers is None and not manifest.rule.by_seniority:
            log.warning(
                "[%s] round=-1 run %s is public with no admission by seniority: any number of fresh keys count in "
                "every round (set --max-round-contributions, --seniority-window, --max-new-contributions and a "
                "clip; README 'Public runs')",
                node.tag,
                manifest.run_id,
            )
        return manifest, built, before

    def join(self) -> JoinedRun:
        """Find the run's manifest (or create it with --new-run) and load model and data to match."""
        cfg, node, tag = self.cfg, self.node, self.node.tag
        built, before = None, None
        found = self.read_pinned() or self.read_manifest()
        if found is None and cfg.new_run:
            manifest, built, before = self.create()
            found = node.peer_id, manifest
        deadline = time.time() + cfg.join_timeout
        if found is None:
            log.info("[%s] round=-1 waiting up to %.0fs for run %s's manifest", tag, cfg.join_timeout, cfg.run_id)
            warm_imports()  # meanwhile: then building the model once the manifest appears takes seconds
        while found is None:
            if time.time() > deadline:
                by = f" created by {cfg.run_creator[:16]}" if cfg.run_creator else ""
                raise ManifestConflict(
                    f"no run {cfg.run_id!r}{by} is visible from {cfg.initial_peers or 'this DHT'} after "
                    f"{cfg.join_timeout:.0f}s; start it with --new-run or check --initial-peers"
                )
            if node.stop.wait(1.0):  # asked to leave before the run was found: nothing to finish
                raise KeyboardInterrupt
            found = self.read_manifest()
        creator, manifest = found
        conflicts = manifest.conflicts(cfg.local)
        if conflicts:
            raise ManifestConflict(
                f"run {cfg.run_id!r} uses other settings than you passed: "
                + "; ".join(conflicts)
                + " (omit them to take the run's settings)"
            )
        node.client.lean_replicas = manifest.lean_replicas
        if manifest.allowed_peers is not None and node.peer_id not in manifest.allowed_peers:
            log.warning(
                "[%s] round=-1 run %s is private and this peer's key is not on its list: it will follow the "
                "run but its contributions will not count",
                tag,
                manifest.run_id,
            )
        loaded, task, replica = built or build(train_config(manifest.model_dump(), cfg))
        initial = replica.sha256()
        if initial != manifest.initial_sha256:
            raise ManifestConflict(
                f"your copy of {manifest.model!r} has initial weights {initial[:12]}, the run started from "
                f"{manifest.initial_sha256[:12]}: a different model version or dtype"
            )
        mine = ties(replica)
        if manifest.ties is not None and manifest.ties != mine:
            raise ManifestConflict(
                f"your copy of {manifest.model!r} ties tensors as {mine}, the run's creator had "
                f"{manifest.ties}: another model version"
            )
        pool = self.shard(task.num_train)
        self.pin(creator, manifest)
        return JoinedRun(creator, manifest, loaded, task, replica, pool, before)

    def shard(self, num_train: int) -> list[int]:
        """This peer's training examples: its shard, or a hash-chosen part of it (not its possibly sorted head)."""
        cfg = self.cfg
        pool = [i for i in range(num_train) if i % cfg.shard[1] == cfg.shard[0]]
        if not pool:
            raise ValueError(f"shard {cfg.shard[0]}/{cfg.shard[1]} of {num_train} training examples is empty")
        if cfg.max_examples and len(pool) > cfg.max_examples:
            pool = sorted(
                sorted(pool, key=lambda i: hashlib.sha256(f"{cfg.seed}:{i}".encode()).digest())[: cfg.max_examples]
            )
        return pool
