"""Read-only looks at a swarm from a short-lived DHT client: the runs it announces (``onebyte runs``)
and one run's manifests and live peers (``onebyte status``). Raise DHTUnavailable when the DHT
cannot be read; what was dropped as malformed comes back in ``rejected``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import Heartbeat
from onebyte.dht.wire import clip


@dataclass
class RunRow:
    """One line of the run list. Text is clipped for display: ids, models and tasks are anyone's
    writing, so runs are grouped under their run id as shown."""

    run_id: str
    model: str
    task: str
    round: int = -1
    peers: int = 0


@dataclass
class RunStatus:
    manifests: dict  # creator's public key -> RunManifest
    peers: dict[str, Heartbeat]  # peer id -> its last heartbeat
    rejected: Counter


@contextmanager
def _client(initial_peers: list[str]) -> Iterator[RecordClient]:
    ident = Identity()
    dht = start_dht(ident, initial_peers, client_mode=True)
    try:
        yield RecordClient(dht, ident)
    finally:
        dht.shutdown()


def list_runs(initial_peers: list[str]) -> tuple[list[RunRow], Counter]:
    """The runs peers announce, sorted by run id: newest round and live peers of each."""
    with _client(initial_peers) as client:
        announced = client.read_runs()
    rows: dict[str, RunRow] = {}
    for ann in announced.values():
        shown = clip(ann.run_id, 28)
        row = rows.setdefault(shown, RunRow(shown, clip(ann.model, 24), clip(ann.task, 16)))
        row.round = max(row.round, ann.round)
        row.peers += 1
    return [rows[k] for k in sorted(rows)], client.rejected


def run_status(initial_peers: list[str], run_id: str) -> RunStatus:
    """The run's manifests (one per creator that claims the id) and its live peers' heartbeats."""
    from onebyte.coordinator_free.manifest import RunManifest

    with _client(initial_peers) as client:
        peers = client.read_peers(run_id)
        manifests = client.read_manifests(run_id, lambda v: RunManifest(**v))
    return RunStatus(manifests, peers, client.rejected)
