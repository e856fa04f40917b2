"""What a peer serves to others for their catch-up (docs/PROTOCOL.md §14): its seed log, its newest
checkpoint and the run's initial weights, over onebyte.p2p.transfer within its serving budget."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

import torch

from onebyte.p2p.transfer import ServedState, Transfer, TransferError
from onebyte.peer.checkpoint import CheckpointError, install_state
from onebyte.peer.checkpoints import CheckpointDir
from onebyte.peer.state import ReplicaState

log = logging.getLogger("onebyte.peer")


class InitialWeights:
    """The run's initial trainable tensors, served as round -1 (§14): built on the first request
    only (a rebuild of the model), then kept, so requests cost no rebuild each."""

    def __init__(self, sha256: str, build: Callable[[], dict[str, torch.Tensor]]):
        self.sha256, self.build = sha256, build
        self.lock = threading.Lock()
        self.tensors: dict[str, torch.Tensor] | None = None

    def __call__(self) -> tuple[str, dict[str, torch.Tensor]]:
        with self.lock:
            if self.tensors is None:
                self.tensors = self.build()
            return self.sha256, self.tensors


def fetch_initial(transfer: Transfer, p2p_id: str, initial_sha256: str, params, *, timeout: float = 120.0) -> None:
    """Install the run's initial weights (round -1) from a peer: the header must name round -1 and
    the manifest's ``initial_sha256``, and the tensors must hash to it (install_state checks names,
    shapes, dtypes and the hash before anything is written). For a peer that cannot build them."""
    meta, tensors = transfer.fetch_state(p2p_id, timeout=timeout, initial=True)
    if (int(meta["round"]), str(meta["sha256"])) != (-1, initial_sha256):
        raise CheckpointError(
            f"peer {p2p_id[:12]} sent round {meta['round']} hash {str(meta['sha256'])[:12]}, not the initial weights "
            f"{initial_sha256[:12]}"
        )
    install_state(tensors, params, initial_sha256, f"initial weights from {p2p_id[:12]}")


def start_transfer(
    dht,
    run_id: str,
    state: ReplicaState,
    checkpoints: CheckpointDir,
    *,
    stop: threading.Event,
    tag: str,
    stats: Counter,
    initial: InitialWeights | None = None,
    on_served: Callable[[str, str], None] | None = None,
) -> Transfer | None:
    """Serve our log and checkpoint over p2p; a peer that cannot still trains (it just cannot help others).
    ``on_served(handler, outcome)`` counts every answer (served, or refused over the serving budget)."""
    params = state.replica.state_tensors()  # the weights and the update rule's state (§17)
    for attempt in range(3):
        try:
            t = Transfer(dht, run_id)
            # no checkpoint of this model is larger: a download stops here whatever a source advertised
            # (16-bit tensors may travel as binary32, PROTOCOL §14: 4 bytes per element at least)
            t.state_limit = (sum(p.numel() * max(4, p.element_size()) for _, p in params), len(params))
            log_ = state.seedlog
            served = ServedState(log_.span, log_.lines, log_.contributions, lambda: checkpoints.newest, initial)
            t.serve(served, on_served)
            return t
        except (OSError, TransferError, RuntimeError) as e:
            log.warning(
                "[%s] round=%d p2p catch-up service not started (attempt %d): %s: %s",
                tag,
                state.applied,
                attempt + 1,
                type(e).__name__,
                e,
            )
            stop.wait(1.0 + attempt)
    stats["transfer_unavailable"] += 1
    return None
