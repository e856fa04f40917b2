"""Checkpoints of the trainable weights: safetensors, written atomically, verified on load.

A checkpoint carries its round and the SHA-256 of the weights (onebyte.zo.weights_sha256) in
the safetensors metadata, so a truncated, corrupted or foreign file is detected, never used.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from onebyte.zo import weights_sha256

FORMAT = "onebyte-checkpoint/1"


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    round: int
    sha256: str
    meta: dict


def save_checkpoint(
    path: str | Path, params: Sequence[tuple[str, torch.Tensor]], round_: int, meta: dict | None = None
) -> CheckpointInfo:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in params}
    digest = weights_sha256(tensors.items())
    header = {"format": FORMAT, "round": str(round_), "sha256": digest, "meta": json.dumps(meta or {}, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return CheckpointInfo(path, round_, digest, meta or {})


def load_checkpoint(
    path: str | Path, params: Sequence[tuple[str, torch.Tensor]], expect: dict | None = None
) -> CheckpointInfo:
    """Verify ``path`` against its own hash, ``expect`` (meta entries that must match, e.g. the run
    id) and ``params``' names, shapes and dtypes, then copy it into ``params``. Raises
    CheckpointError (and changes nothing) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted?): {e}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a onebyte checkpoint (format {header.get('format')!r})")
    try:
        meta = json.loads(header.get("meta", "{}"))
        round_ = int(header["round"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} has a malformed header: {e}") from None
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise CheckpointError(f"checkpoint {path} is for {key} {meta.get(key)!r}, not {want!r}")
    digest = install_state(tensors, params, header.get("sha256"), str(path))
    return CheckpointInfo(path, round_, digest, meta)


def install_state(
    tensors: dict[str, torch.Tensor], params: Sequence[tuple[str, torch.Tensor]], claimed_sha256: str | None, where: str
) -> str:
    """Check a full set of trainable tensors (from a file or a peer) against its claimed hash and
    against ``params``, then copy it in; returns the hash. Nothing is changed if a check fails."""
    digest = weights_sha256(sorted(tensors.items()))
    if digest != claimed_sha256:
        raise CheckpointError(
            f"checkpoint {where} is corrupted: its weights hash {digest[:12]} but it claims {str(claimed_sha256)[:12]}"
        )
    expected = {name: t for name, t in params}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise CheckpointError(
            f"checkpoint {where} belongs to another model or trainable set (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape or t.dtype != expected[name].dtype:
            raise CheckpointError(
                f"checkpoint {where}: tensor {name} is {t.dtype}{list(t.shape)}, model has "
                f"{expected[name].dtype}{list(expected[name].shape)}"
            )
    with torch.no_grad():
        for name, t in tensors.items():
            expected[name].copy_(t)
    return digest
