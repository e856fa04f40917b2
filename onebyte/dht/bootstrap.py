"""A bootstrap node: a DHT node that trains nothing and that peers join through (``onebyte bootstrap``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from onebyte import PROTOCOL_VERSION, __version__
from onebyte.dht.client import start_dht
from onebyte.dht.identity import Identity

REFRESH_SECONDS = 30.0  # re-read the visible addresses this often: keeps routing fresh, like hivemind-dht


class BootstrapNode:
    """Starts the DHT node (and its Prometheus metrics with ``metrics_port``); ``maddrs`` are the
    addresses peers pass as ``--initial-peers``. ``run`` keeps it up until ``stop`` is set."""

    def __init__(
        self,
        initial_peers: list[str],
        *,
        host_maddrs: list[str] | None = None,
        announce_maddrs: list[str] | None = None,
        identity_path: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        dht_options: dict | None = None,
    ):
        self.metrics = None
        if metrics_port is not None:
            from onebyte.metrics.bootstrap import BootstrapMetrics

            self.metrics = BootstrapMetrics()
            self.metrics.serve(metrics_port, metrics_host)
        self.dht = start_dht(
            Identity(),
            initial_peers,
            host_maddrs=host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
            announce_maddrs=announce_maddrs,
            identity_path=identity_path,
            **(dht_options or {}),
        )
        self.maddrs = [str(a) for a in self.dht.get_visible_maddrs(latest=True)]

    def write_maddrs(self, path: str | Path) -> None:
        """The addresses, one a line, written atomically: a reader never sees half a file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("".join(a + "\n" for a in self.maddrs))
        tmp.replace(path)

    def run(self, stop: threading.Event) -> None:
        """Keep routing fresh and the metrics current until ``stop`` is set."""
        metrics, maddrs = self.metrics, self.maddrs
        if metrics is not None:
            metrics.on_start(version=__version__, protocol_version=PROTOCOL_VERSION, peer_id=str(self.dht.peer_id))
            metrics.update(self.dht, maddrs)
        next_refresh = time.monotonic() + REFRESH_SECONDS
        while not stop.wait(5 if metrics is not None else REFRESH_SECONDS):
            if time.monotonic() >= next_refresh:
                maddrs = self.dht.get_visible_maddrs(latest=True)
                next_refresh = time.monotonic() + REFRESH_SECONDS
            if metrics is not None:
                metrics.update(self.dht, maddrs)

    def shutdown(self) -> None:
        self.dht.shutdown()
