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


# runs whose live round is looked up (two DHT reads each); the rest show their announcement's round
MAX_LIVE_LOOKUPS = 32


def list_runs(initial_peers: list[str]) -> tuple[list[RunRow], Counter]:
    """The runs peers announce, sorted by run id, each with its live round and live peers.

    A run is announced every few minutes and heartbeats go out every minute, so both carry stale
    rounds; a live run's round is read off its clock instead (its signed manifest's start and round
    length give the newest final round, which its peers apply within seconds), for every run with a
    live peer (a heartbeat that has not expired)."""
    with _client(initial_peers) as client:
        announced = client.read_runs()
        rows: dict[str, RunRow] = {}
        ids: dict[str, str] = {}
        for ann in announced.values():
            shown = clip(ann.run_id, 28)
            row = rows.setdefault(shown, RunRow(shown, clip(ann.model, 24), clip(ann.task, 16)))
            row.round = max(row.round, ann.round)
            row.peers += 1
            ids.setdefault(shown, ann.run_id)
        for shown in sorted(rows)[:MAX_LIVE_LOOKUPS]:
            live = _live_round(client, ids[shown])
            if live is not None:
                rows[shown].round, rows[shown].peers = live
    return [rows[k] for k in sorted(rows)], client.rejected


def _live_round(client: RecordClient, run_id: str) -> tuple[int, int] | None:
    """(the run's newest final round, its live peers), or None without a readable manifest or a live peer."""
    from onebyte.coordinator_free.manifest import RunManifest, pick_manifest

    picked = pick_manifest(client.read_manifests(run_id, lambda v: RunManifest(**v)), run_id)
    peers = client.read_peers(run_id)
    final = run_clock(picked[1])[1] if picked else None
    if final is None or not peers:
        return None
    return final, len(peers)


def run_clock(manifest) -> tuple[int | None, int | None]:
    """(the round in progress, the newest final round) by the run's clock now (-1: none yet); (None, None) for a
    manifest whose timing makes no clock."""
    from hivemind.utils import get_dht_time

    from onebyte.coordinator_free.rounds import RoundClock

    now = get_dht_time()
    try:
        clock = RoundClock.of(manifest)
        return clock.round_at(now), clock.last_final(now)
    except (ValueError, OverflowError):
        return None, None


def run_status(initial_peers: list[str], run_id: str) -> RunStatus:
    """The run's manifests (one per creator that claims the id) and its live peers' heartbeats."""
    from onebyte.coordinator_free.manifest import RunManifest

    with _client(initial_peers) as client:
        peers = client.read_peers(run_id)
        manifests = client.read_manifests(run_id, lambda v: RunManifest(**v))
    return RunStatus(manifests, peers, client.rejected)
