"""Prometheus metrics: names that follow the conventions (in-process registries, no DHT). Every exported
name scraped over HTTP, rejection counts and a real Prometheus server: tests/swarm/test_metrics_live.py."""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from onebyte.metrics import PeerMetrics


# -- helpers shared with test_deploy and tests/swarm/test_metrics_live.py ----------------------
def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def exercised_peer_metrics() -> PeerMetrics:
    """A PeerMetrics after every event the step loop reports."""
    m = PeerMetrics()
    m.on_start(
        version="0.1.0", protocol_version="1", model="tiny-llama", run_id="r", peer_id="ab", dataset="drugreview"
    )
    m.on_contribution(0.2, 0.69)
    m.on_published(2, 2)
    m.on_received(3)
    m.on_applied(0, 2, 3, 0.01, 1.5)
    m.on_rejected("late", 1)
    m.on_eval(0.7, 0.6)
    m.on_live_peers(2)
    m.on_hash_check(True)
    m.on_hash_check(False)
    m.on_catchup("log", 3.0)
    m.on_repair()
    m.on_checkpoint()
    return m


# -- naming conventions -------------------------------------------------------------------------
STANDARD_PREFIXES = ("process_", "python_")  # prometheus-client's own collectors, named by its conventions
UNIT_WORDS = {
    "seconds": (
        "second",
        "duration",
        "latency",
        "time",
        "uptime",
        "delay",
        "elapsed",
        "ms",
        "millis",
        "minutes",
        "hours",
    ),
    "bytes": ("byte", "size", "memory", "kb", "mb", "kib", "mib"),
}


def convention_problems(families) -> list[str]:
    problems = []
    stems = {f.name for f in families if f.type in ("counter", "histogram")}
    for fam in families:
        name, kind = fam.name, fam.type
        if kind == "gauge" and name.endswith("_created") and name.removesuffix("_created") in stems:
            continue  # the client library's creation timestamp of a counter or histogram
        if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name):
            problems.append(f"{name}: not snake_case")
        if not name.startswith("onebyte_") and not name.startswith(STANDARD_PREFIXES):
            problems.append(f"{name}: no onebyte_ prefix")
        if not fam.documentation.strip():
            problems.append(f"{name}: no help text")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"{name}: _total on a {kind}")
        if kind == "info" and not all(s.name == name + "_info" for s in fam.samples):
            problems.append(f"{name}: info samples must end _info")
        for s in fam.samples:
            if kind == "counter" and not (s.name == name + "_total" or s.name == name + "_created"):
                problems.append(f"{s.name}: counter sample without _total")
            if kind == "histogram" and s.name not in {name + x for x in ("_bucket", "_sum", "_count", "_created")}:
                problems.append(f"{s.name}: odd histogram sample")
        base = name.removesuffix("_total")
        words = base.split("_")
        for unit, hints in UNIT_WORDS.items():
            if (
                any(w.startswith(h) for w in words for h in hints)
                or kind == "histogram"
                and unit == "seconds"
                and "bytes" not in words
            ):
                if words[-1] != unit:
                    problems.append(f"{name}: looks like a {unit} quantity but does not end in _{unit}")
        for bad in ("_ms", "_millis", "_milliseconds", "_kb", "_mb", "_percent", "_minutes"):
            if bad + "_" in name + "_":
                problems.append(f"{name}: not a base unit ({bad[1:]})")
    return problems


def test_convention_checker_catches_bad_names():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    r = CollectorRegistry()
    Gauge("onebyte_round_duration", "x", registry=r)
    Gauge("onebyte_step_ms", "x", registry=r)
    Gauge("onebyte_payload_size", "x", registry=r)
    Gauge("onebyteRound", "x", registry=r)
    Gauge("other_thing", "x", registry=r)
    Histogram("onebyte_apply", "x", registry=r)
    Counter("onebyte_peers_seen", "x", registry=r)
    fams = list(text_string_to_metric_families(__import__("prometheus_client").generate_latest(r).decode()))
    found = "\n".join(convention_problems(fams))
    for name in (
        "onebyte_round_duration",
        "onebyte_step_ms",
        "onebyte_payload_size",
        "onebyteRound",
        "other_thing",
        "onebyte_apply",
    ):
        assert name in found, found
    assert "onebyte_peers_seen" not in found  # a counter named without _total gets it from the client library


# -- series an operator can trust -------------------------------------------------------------------------------
def _series(m: PeerMetrics) -> dict[tuple, float]:
    text = __import__("prometheus_client").generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_measurements_are_absent_until_measured_not_a_false_zero():
    m = PeerMetrics(process=False)
    names = {name for name, _ in _series(m)}
    for absent in (
        "onebyte_round",
        "onebyte_train_loss",
        "onebyte_eval_accuracy_ratio",
        "onebyte_eval_loss",
        "onebyte_eval_balanced_accuracy_ratio",
    ):
        assert absent not in names, absent
    m.on_applied(0, 1, 0, 0.01, 1.0)
    m.on_contribution(0.1, 0.7)
    m.on_eval(0.75, 0.5, 0.74)
    s = _series(m)
    assert s[("onebyte_round", ())] == 0 and s[("onebyte_train_loss", ())] == 0.7
    assert s[("onebyte_eval_accuracy_ratio", ())] == 0.75 and s[("onebyte_eval_balanced_accuracy_ratio", ())] == 0.74
    assert s[("onebyte_eval_loss", ())] == 0.5


def test_every_rejection_reason_is_a_series_from_the_start():
    from onebyte.metrics.peer import REJECTION_REASONS

    s = _series(PeerMetrics(process=False))
    for stage, reasons in REJECTION_REASONS.items():
        for reason in reasons:
            key = ("onebyte_records_rejected_total", (("reason", reason), ("stage", stage)))
            assert s.get(key) == 0.0, key


def test_the_code_counts_no_rejection_reason_the_metrics_do_not_list():
    """Every reason string the record readers, the validator and the round rule count appears in REJECTION_REASONS
    (a reason missing there would still be counted, but would have no series until its first rejection)."""
    from pathlib import Path

    from onebyte.metrics.peer import REJECTION_REASONS

    src = Path(__file__).resolve().parents[2] / "onebyte"
    listed = {r for reasons in REJECTION_REASONS.values() for r in reasons}
    used: set[str] = set()
    for path in [*src.glob("dht/*.py"), src / "coordinator_free" / "agreement.py"]:
        text = path.read_text()
        used |= set(re.findall(r'(?:rejected|reasons|dropped)\["([a-z_]+)"\]', text))
        used |= set(re.findall(r'WireError\("([a-z_]+)"', text))
        used |= set(re.findall(r'rejected\[\s*"([a-z_]+)" if', text))
    assert used, "found no reason strings: the patterns above no longer match the code"
    assert used <= listed, sorted(used - listed)


def test_metrics_bind_loopback_unless_told_otherwise():
    from tests.support.tools import free_port

    port = free_port()
    server, _ = PeerMetrics(process=False).serve(port)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert "onebyte_contributions_made_total" in scrape(port)
    finally:
        server.shutdown()
