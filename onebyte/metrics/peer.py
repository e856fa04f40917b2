"""Prometheus metrics of one peer: what an operator watches (see deploy/ for the dashboard).

Each peer owns a registry of its own (several peers may share a process in tests), served over
HTTP only when the user asks for it (``--metrics-port``). The step loop calls the ``on_*``
methods at the events they name; nothing here blocks or raises into the loop.

Names follow Prometheus' conventions: an ``onebyte_`` prefix, base units in the name (``_seconds``,
``_bytes``, ``_ratio``), ``_total`` on counters (prometheus-client appends it), ``_info`` on the
identity metric. tests/swarm/test_metrics_live.py checks every exported name against them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as _Counts

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

log = logging.getLogger("onebyte.metrics")

# every reason a record or contribution is refused, by the stage that refuses it (onebyte_records_rejected_total):
# round: coordinator_free/agreement.py; parse: dht/records.py, dht/wire.py, dht/lean.py; validator:
# dht/validator.py and dht/wire.py. tests/unit/test_metrics.py checks that the code uses no reason missing here.
_WIRE = ("extension_type", "malformed", "not_msgpack", "oversized", "too_deep")
REJECTION_REASONS = {
    "round": ("late", "malformed", "new_key_limit", "not_allowed", "over_round_cap", "too_many_codes", "wrong_round"),
    "parse": ("evicted", "foreign_subkey", "not_a_dictionary", *_WIRE),
    "validator": ("bad_signature", "expiration_too_far", "foreign_subkey", "unsigned", *_WIRE),
}

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60, 120)
VALIDATOR_POLL_SECONDS = 15.0  # the DHT validator's counts live in the DHT process: read them at most this often


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1"):
    """Start a /metrics HTTP endpoint for ``registry`` in a daemon thread.

    The ``*_created`` series of counters and histograms are turned off (process-wide): in the
    Prometheus text format each is one more gauge per series that no dashboard uses.
    """
    disable_created_metrics()
    server, thread = start_http_server(port, addr=addr, registry=registry)
    log.info("Prometheus metrics on http://%s:%d/metrics", addr, port)
    return server, thread


class _Measured:
    """A gauge that exists only once it has a value: registered on its first ``set``."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry):
        self._args = (name, documentation)
        self._registry = registry
        self._gauge: Gauge | None = None

    def set(self, value: float) -> None:
        if self._gauge is None:
            self._gauge = Gauge(*self._args, registry=self._registry)
        self._gauge.set(value)


class PeerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True):
        self.registry = r = registry or CollectorRegistry()
        if process:  # process_cpu_seconds_total, process_resident_memory_bytes, ... (the standard ones)
            ProcessCollector(registry=r)
        self.info = Info("onebyte_peer", "Peer identity and versions", registry=r)
        self.round = _Measured("onebyte_round", "Last round applied by this peer", r)
        # measurements, not counts: absent until first measured (a 0 would draw a false line at 0 on the dashboard)
        self.train_loss = _Measured("onebyte_train_loss", "Mean of L+ and L- of the last contribution", r)
        self.eval_accuracy = _Measured(
            "onebyte_eval_accuracy_ratio", "Held-out accuracy (0..1) at the last evaluation", r
        )
        self.eval_loss = _Measured("onebyte_eval_loss", "Held-out loss at the last evaluation", r)
        self.eval_balanced_accuracy = _Measured(
            "onebyte_eval_balanced_accuracy_ratio",
            "Held-out balanced accuracy (mean recall over classes, 0..1) at the last evaluation",
            r,
        )
        self.made = Counter("onebyte_contributions_made", "Contributions computed by this peer", registry=r)
        self.published = Counter(
            "onebyte_contributions_published", "Contributions published in a signed record", registry=r
        )
        self.applied = Counter(
            "onebyte_contributions_applied",
            "Contributions applied to the weights, by origin (local/remote)",
            ["origin"],
            registry=r,
        )
        self.rejected = Counter(
            "onebyte_records_rejected",
            "Records or contributions rejected, by reason and by the stage that "
            "refused them (round: deciding a round, parse: reading a record, validator: this peer's DHT node)",
            ["reason", "stage"],
            registry=r,
        )
        self.live_peers = Gauge("onebyte_live_peers", "Peers of the run seen alive (heartbeats)", registry=r)
        self.wire_bytes = Counter(
            "onebyte_wire_bytes",
            "Record payload bytes this peer stored or read, by direction",
            ["direction"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "onebyte_step_seconds",
            "Time to compute one contribution (two forward passes)",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.round_latency = Histogram(
            "onebyte_round_latency_seconds",
            "From a round's close to this peer applying it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "onebyte_apply_seconds", "Time to apply one round", buckets=STEP_BUCKETS, registry=r
        )
        self.catchups = Counter("onebyte_catchups", "Catch-ups completed, by method", ["method"], registry=r)
        self.catchup_seconds = Histogram(
            "onebyte_catchup_seconds", "Duration of a catch-up", buckets=LATENCY_BUCKETS, registry=r
        )
        self.repairs = Counter("onebyte_repairs", "Repairs after a weight-hash disagreement", registry=r)
        self.hash_checks = Counter(
            "onebyte_hash_checks", "Weight-hash comparisons with other peers, by result", ["result"], registry=r
        )
        self.hash_mismatches = Counter("onebyte_hash_mismatches", "Weight-hash comparisons this peer lost", registry=r)
        self.checkpoints = Counter("onebyte_checkpoints_saved", "Checkpoints written", registry=r)
        self.served = Counter(
            "onebyte_catchup_answers",
            "Catch-up requests other peers made of this one, by handler (info/log/state) and outcome "
            "(served, or refused over the serving budget)",
            ["handler", "outcome"],
            registry=r,
        )
        self.own_dropped = Counter(
            "onebyte_own_records_not_counted",
            "Rounds whose set left out this peer's own on-time record (the round rule's cap or new-key limit)",
            registry=r,
        )
        self.suspect_peers = Gauge(
            "onebyte_suspect_peers",
            "Peers whose codes push far harder than the swarm's (influence monitor)",
            registry=r,
        )
        for origin in ("local", "remote"):
            self.applied.labels(origin=origin)
        for result in ("agree", "disagree"):
            self.hash_checks.labels(result=result)
        for d in ("sent", "received"):
            self.wire_bytes.labels(direction=d)
        for method in ("log", "checkpoint"):
            self.catchups.labels(method=method)
        for handler in ("info", "log", "state"):
            for outcome in ("served", "refused"):
                self.served.labels(handler=handler, outcome=outcome)
        for stage, reasons in REJECTION_REASONS.items():  # every series from the start: a rate, not a gap
            for reason in reasons:
                self.rejected.labels(reason=reason, stage=stage)
        self._synced: dict[tuple[str, str], int] = {}  # cumulative counts already added, per (reason, stage)
        self._validator_polled = 0.0

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Start the /metrics HTTP endpoint in a daemon thread."""
        return serve(self.registry, port, addr)

    # -- events from the step loop --------------------------------------------------------------
    def on_start(self, **info: str) -> None:
        self.info.info({k: str(v) for k, v in info.items()})

    def on_contribution(self, seconds: float, loss: float) -> None:
        self.made.inc()
        self.step_seconds.observe(seconds)
        self.train_loss.set(loss)

    def on_published(self, n: int, payload_bytes: int) -> None:
        self.published.inc(n)
        self.wire_bytes.labels(direction="sent").inc(payload_bytes)

    def on_applied(
        self, round_: int, local: int, remote: int, apply_seconds: float, latency_seconds: float | None
    ) -> None:
        self.round.set(round_)
        self.applied.labels(origin="local").inc(local)
        self.applied.labels(origin="remote").inc(remote)
        self.apply_seconds.observe(apply_seconds)
        if latency_seconds is not None:
            self.round_latency.observe(max(0.0, latency_seconds))

    def on_received(self, payload_bytes: int) -> None:
        self.wire_bytes.labels(direction="received").inc(payload_bytes)

    def on_rejected(self, reason: str, n: int = 1, stage: str = "round") -> None:
        if n:
            self.rejected.labels(reason=reason, stage=stage).inc(n)

    def sync_rejections(self, client) -> None:
        """Fold in what a RecordClient counted: its parse rejections and its DHT node's validator's.

        Both are cumulative counts kept elsewhere (``client.rejected``, and the validator inside the
        DHT process, read through ``client.validator_rejections()`` at most every
        VALIDATOR_POLL_SECONDS); only what is new since the last call is added. Call it from the
        step loop's thread, never from the metrics server's (the DHT pipe is not thread-safe).
        """
        try:
            self._sync("parse", _Counts(client.rejected))
            now = time.monotonic()
            if now - self._validator_polled >= VALIDATOR_POLL_SECONDS:
                self._validator_polled = now
                self._sync("validator", client.validator_rejections())
        except Exception:  # noqa: BLE001 - metrics never break the loop
            log.debug("could not read rejection counts", exc_info=True)

    def _sync(self, stage: str, counts) -> None:
        for reason, total in counts.items():
            seen = self._synced.get((reason, stage), 0)
            if total > seen:
                self.rejected.labels(reason=reason, stage=stage).inc(total - seen)
                self._synced[(reason, stage)] = total

    def on_eval(self, accuracy: float | None, loss: float | None, balanced_accuracy: float | None = None) -> None:
        if accuracy is not None:
            self.eval_accuracy.set(accuracy)
        if balanced_accuracy is not None:
            self.eval_balanced_accuracy.set(balanced_accuracy)
        if loss is not None:
            self.eval_loss.set(loss)

    def on_live_peers(self, n: int) -> None:
        self.live_peers.set(n)

    def on_hash_check(self, agree: bool) -> None:
        self.hash_checks.labels(result="agree" if agree else "disagree").inc()
        if not agree:
            self.hash_mismatches.inc()

    def on_catchup(self, method: str, seconds: float) -> None:
        self.catchups.labels(method=method).inc()
        self.catchup_seconds.observe(seconds)

    def on_served(self, handler: str, outcome: str) -> None:
        """From the transfer thread (prometheus-client's counters are thread-safe)."""
        self.served.labels(handler=handler, outcome=outcome).inc()

    def on_repair(self) -> None:
        self.repairs.inc()

    def on_checkpoint(self) -> None:
        self.checkpoints.inc()

    def on_suspects(self, n: int) -> None:
        self.suspect_peers.set(n)
