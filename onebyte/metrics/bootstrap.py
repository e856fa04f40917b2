"""Prometheus metrics of a bootstrap node (``onebyte bootstrap --metrics-port P``).

A bootstrap node trains nothing: what an operator wants to know is that it is up, which version
it runs, and how much of the swarm it knows (its DHT routing table and the records it stores).
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Gauge, Info, ProcessCollector

from onebyte.metrics.peer import serve

log = logging.getLogger("onebyte.metrics")


async def _dht_sizes(_dht, node) -> tuple[int, int]:
    """(nodes in the routing table, records stored), read inside the DHT process."""
    protocol = node.protocol
    return len(protocol.routing_table.uid_to_peer_id), len(protocol.storage)


class BootstrapMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True):
        self.registry = r = registry or CollectorRegistry()
        if process:
            ProcessCollector(registry=r)
        self.started = time.time()
        self.info = Info("onebyte_bootstrap", "Bootstrap node identity and version", registry=r)
        self.uptime = Gauge("onebyte_bootstrap_uptime_seconds", "Seconds since this bootstrap node started", registry=r)
        self.uptime.set_function(lambda: time.time() - self.started)
        self.routing_peers = Gauge(
            "onebyte_bootstrap_routing_table_peers", "DHT nodes in this node's routing table", registry=r
        )
        self.stored_records = Gauge(
            "onebyte_bootstrap_stored_records", "DHT records (keys) this node stores", registry=r
        )
        self.visible_maddrs = Gauge("onebyte_bootstrap_visible_maddrs", "Multiaddrs this node announces", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        return serve(self.registry, port, addr)

    def on_start(self, **info: str) -> None:
        self.info.info({k: str(v) for k, v in info.items()})

    def update(self, dht, maddrs: list | None = None, timeout: float = 10.0) -> None:
        """Read the routing table and storage sizes from the DHT process (call from one thread only)."""
        try:
            peers, records = dht.run_coroutine(_dht_sizes, return_future=True).result(timeout=timeout)
            self.routing_peers.set(peers)
            self.stored_records.set(records)
            if maddrs is not None:
                self.visible_maddrs.set(len(maddrs))
        except Exception:  # noqa: BLE001 - metrics never stop the node
            log.debug("could not read DHT sizes", exc_info=True)
