"""Taking a trained model away: ``onebyte export`` and ``onebyte eval``.

A model comes from one of three sources:
* a checkpoint file (``ckpt-*.safetensors`` of a swarm peer, or ``onebyte train --checkpoint``);
* a checkpoint directory (a peer's ``--checkpoint-dir``, or its ``<run_id>`` folder): the newest
  intact checkpoint, with the run's pinned ``manifest.json`` saying which model and trainable set;
* a live run (``--run-id``, ``--initial-peers``): a peer that joins without contributing, catches
  up to the newest final round, and leaves.

The base model is loaded as the run loaded it, its initial weights are checked against the
manifest's ``initial_sha256`` (so a checkpoint of another model or run is refused, not blended),
then the checkpoint is verified against its own hash and installed. Every failure is one line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from onebyte.coordinator_free.manifest import RunManifest
from onebyte.peer.checkpoint import CheckpointError, load_checkpoint
from onebyte.settings import TASK_FIELDS
from onebyte.tasks.loaded_model import LoadedModel, trainable_parameters
from onebyte.tasks.loading import load_model
from onebyte.zo import weights_sha256
from onebyte.zo.optim import is_state_name, zero_state

log = logging.getLogger("onebyte.peer")


@dataclass
class Trained:
    """A model with a run's trained weights installed, and where they came from."""

    loaded: LoadedModel
    manifest: RunManifest | None
    info: dict
    task: dict  # the run's task settings (onebyte.settings.TASK_FIELDS), for scoring it as it was trained


def find_checkpoint(path: str | Path, run_id: str | None = None) -> tuple[list[Path], RunManifest | None]:
    """Checkpoint files to try, newest first, and the run's pinned manifest if there is one."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path], _pinned(path.parent / "manifest.json")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    folder = path
    if not list(path.glob("ckpt-*.safetensors")):
        runs = [d for d in path.iterdir() if d.is_dir() and list(d.glob("ckpt-*.safetensors"))]
        if run_id is not None:
            runs = [d for d in runs if d.name == run_id]
        if len(runs) != 1:
            names = ", ".join(sorted(d.name for d in runs)) or "none"
            raise CheckpointError(
                f"{path} holds checkpoints of {len(runs)} runs ({names}); pass --run-id or the run's folder"
            )
        folder = runs[0]
    return sorted(folder.glob("ckpt-*.safetensors"), reverse=True), _pinned(folder / "manifest.json")


def _pinned(path: Path) -> RunManifest | None:
    if not path.is_file():
        return None
    try:
        return RunManifest(**json.loads(path.read_text())["manifest"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"the run manifest {path} is unreadable: {type(e).__name__}: {str(e)[:200]}") from None


def _checkpoint_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
            names = list(f.keys())
        return {**json.loads(header.get("meta", "{}")), "_names": names}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted?): {e}") from None


def from_checkpoint(
    path: str | Path, *, run_id: str | None = None, model: str | None = None, device: str = "cpu"
) -> Trained:
    """The base model of the checkpoint's run with the checkpoint installed (newest intact one)."""
    files, manifest = find_checkpoint(path, run_id)
    if manifest is not None and run_id is not None and manifest.run_id != run_id:
        raise CheckpointError(f"{path} is a checkpoint of run {manifest.run_id!r}, not {run_id!r}")
    errors, loaded = [], None
    for file in files:
        meta = _checkpoint_meta(file)
        if run_id is not None and meta.get("run_id") != run_id:
            raise CheckpointError(f"{file} is a checkpoint of run {meta.get('run_id')!r}, not {run_id!r}")
        settings = manifest.model_dump() if manifest else meta
        name = model or settings.get("model")
        if not name:
            raise CheckpointError(f"{file} does not say which model it belongs to; pass --model")
        if loaded is None or loaded.name != name:  # one load for every candidate file: a refused file changes nothing
            loaded = load_model(
                name,
                kind=settings.get("model_kind") or "causal-lm",
                dtype=settings.get("dtype") or "float32",
                device=device,
                init_seed=settings.get("init_seed") or 0,
            )
        if manifest is not None:
            # the weights, then the update rule's state (v3): the run's initial hash covers both
            params = trainable_parameters(loaded.model, manifest.trainable)
            params = [*params, *zero_state(manifest.optimizer, params)]
            if weights_sha256(params) != manifest.initial_sha256:
                raise CheckpointError(
                    f"model {name!r} does not start from run {manifest.run_id!r}'s initial weights "
                    f"(hash {weights_sha256(params)[:12]}, the run's {manifest.initial_sha256[:12]}): a "
                    "checkpoint of another model or run"
                )
        else:
            wanted = set(meta["_names"])
            params = [(n, p) for n, p in trainable_parameters(loaded.model) if n in wanted]
            params += _state_scratch(file, wanted)
        expect = {"initial_sha256": manifest.initial_sha256} if manifest is not None else {}
        try:
            ck = load_checkpoint(file, params, expect)
        except CheckpointError as e:
            if manifest is None or len(files) == 1:
                raise
            errors.append(str(e))  # a truncated newest file: the one before it may be intact
            continue
        info = {
            "source": "checkpoint",
            "checkpoint": str(file),
            "round": ck.round,
            "sha256": ck.sha256,
            "model": name,
            "run_id": manifest.run_id if manifest else meta.get("run_id"),
            "refused": errors,
        }
        return Trained(loaded, manifest, info, {k: settings.get(k) for k in TASK_FIELDS})
    raise CheckpointError(f"no intact checkpoint in {path}: {errors[-1] if errors else 'none found'}")


def _state_scratch(file: Path, names: set[str]) -> list[tuple[str, torch.Tensor]]:
    """Somewhere to load a checkpoint's optimizer state into: it is verified with the weights, then
    dropped (an export is the weights alone)."""
    with safe_open(str(file), "pt") as f:
        return [(n, f.get_tensor(n)) for n in sorted(names) if is_state_name(n)]


def from_live_run(swarm_cfg) -> Trained:
    """Join a run without contributing, catch up to its newest final round, and keep the result."""
    from onebyte.peer.swarm import run_peer

    swarm_cfg.follow_only = True
    kept = []
    report = run_peer(swarm_cfg, keep=kept)
    peer = kept[0]
    if peer.applied < 0:
        raise CheckpointError(f"caught up with no round of run {swarm_cfg.run_id!r}: nothing to export yet")
    loaded = peer.joined.loaded
    info = {
        "source": "live run",
        "run_id": swarm_cfg.run_id,
        "round": peer.applied,
        "sha256": report.get("final_sha256"),
        "model": peer.manifest.model,
    }
    return Trained(loaded, peer.manifest, info, {k: getattr(peer.manifest, k) for k in TASK_FIELDS})
