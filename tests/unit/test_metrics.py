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
