"""This volunteer's presence on the network: its key, its DHT node, its record client, its metrics.

Made once per process before any run is known, passed to everything that talks to the swarm,
and closed last. ``stop`` is set by a signal (or a caller) to leave the run after the current step.
"""

from __future__ import annotations

import threading
from collections import Counter

from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.metrics.peer import PeerMetrics
from onebyte.settings import SwarmConfig


class Node:
    def __init__(self, cfg: SwarmConfig):
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self.identity = Identity.load_or_create(cfg.identity_path)
        self.peer_id = self.identity.peer_id
        self.tag = self.peer_id[:8]  # what every log line of this peer starts with
        self.stop = threading.Event()
        self.stats: Counter = Counter()  # what happened, for the report and the logs (metrics has the live view)
        self.dht = start_dht(
            self.identity,
            cfg.initial_peers,
            host_maddrs=cfg.host_maddrs,
            announce_maddrs=cfg.announce_maddrs,
            num_replicas=cfg.num_replicas,
            **cfg.dht_options,
        )
        self.client = RecordClient(self.dht, self.identity)
        self.metrics = PeerMetrics()
        if cfg.metrics_port is not None:
            self.metrics.serve(cfg.metrics_port, cfg.metrics_host)

    def close(self) -> None:
        try:
            if self.dht.is_alive():
                self.dht.shutdown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
