"""Prometheus metrics: PeerMetrics (a training peer) and BootstrapMetrics (a bootstrap node)."""

from onebyte.metrics.bootstrap import BootstrapMetrics
from onebyte.metrics.peer import PeerMetrics

__all__ = ["BootstrapMetrics", "PeerMetrics"]
