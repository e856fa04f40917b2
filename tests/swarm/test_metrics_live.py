"""Prometheus metrics with real DHT nodes and processes: every exported name over HTTP, rejection
counts from a real validator, and a real Prometheus server scraping a live 2-peer swarm on loopback.
(The naming conventions themselves: tests/unit/test_metrics.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from hivemind.utils import get_dht_time
from prometheus_client.parser import text_string_to_metric_families

from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import ContributionRecord, round_key
from onebyte.dht.validator import owner_subkey
from onebyte.metrics import BootstrapMetrics, PeerMetrics
from onebyte.peer.demo import start_bootstrap
from tests.support.swarm import START, TINY, WAIT, Swarm
from tests.support.tools import apt_install, free_port
from tests.unit.test_metrics import convention_problems, exercised_peer_metrics, scrape


def test_every_exported_metric_name_follows_the_prometheus_conventions():
    """Scrape a peer's and a bootstrap node's registries over HTTP after real events and check every name."""
    peer = exercised_peer_metrics()
    boot = BootstrapMetrics()
    boot.on_start(version="0.1.0", protocol_version="1", peer_id="x")
    dht = start_dht(Identity())
    try:
        boot.update(dht, ["/ip4/127.0.0.1/tcp/1/p2p/x"])
    finally:
        dht.shutdown()
    texts = {}
    for label, reg in (("peer", peer), ("bootstrap", boot)):
        port = free_port()
        server, _ = reg.serve(port, addr="127.0.0.1")
        try:
            texts[label] = scrape(port)
        finally:
            server.shutdown()
    fams = {label: list(text_string_to_metric_families(t)) for label, t in texts.items()}
    problems = convention_problems(fams["peer"] + fams["bootstrap"])
    assert not problems, "\n".join(problems)
    names = {label: {s.name for f in fs for s in f.samples} for label, fs in fams.items()}
    # what the issue asks a peer to export, under conventional names
    for want in (
        "onebyte_round",
        "onebyte_train_loss",
        "onebyte_eval_accuracy_ratio",
        "onebyte_contributions_made_total",
        "onebyte_contributions_applied_total",
        "onebyte_records_rejected_total",
        "onebyte_live_peers",
        "onebyte_wire_bytes_total",
        "onebyte_step_seconds_bucket",
        "onebyte_round_latency_seconds_bucket",
        "onebyte_catchups_total",
        "onebyte_repairs_total",
        "onebyte_hash_mismatches_total",
        "onebyte_peer_info",
        "process_resident_memory_bytes",
    ):
        assert want in names["peer"], want
    for want in ("onebyte_bootstrap_info", "onebyte_bootstrap_uptime_seconds", "onebyte_bootstrap_routing_table_peers"):
        assert want in names["bootstrap"], want
    info = next(s for f in fams["peer"] for s in f.samples if s.name == "onebyte_peer_info")
    assert {"version", "model", "run_id", "peer_id"} <= set(info.labels)


def _rejected(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "onebyte_records_rejected_total":
                out[(s.labels["stage"], s.labels["reason"])] = s.value
    return out


def test_rejected_records_count_parse_and_validator_rejections():
    """A forged record refused by the peer's DHT node and a malformed one its reader skips both reach the metric."""
    victim, attacker = Identity(), Identity()
    vdht = start_dht(victim)
    adht = start_dht(attacker, [str(a) for a in vdht.get_visible_maddrs()])
    try:
        client = RecordClient(vdht, victim)
        key = round_key("metrics-test", 3)
        forged = ContributionRecord(round=3, published_at=time.time(), codes=bytes([0x7F])).pack()
        adht.store(
            key, forged, get_dht_time() + 600, subkey=owner_subkey(victim.public_key), return_future=True
        ).result(timeout=30)
        assert RecordClient(adht, attacker)._store(key, {"not": "a record"}, get_dht_time() + 600)
        client.read_round("metrics-test", 3)
        m = PeerMetrics(process=False)
        m.sync_rejections(client)
        m.sync_rejections(client)  # counts are cumulative elsewhere: a second call adds nothing new
        m._validator_polled = 0.0
        m.sync_rejections(client)
        m.on_rejected("late", 2)
        counts = _rejected(__import__("prometheus_client").generate_latest(m.registry).decode())
    finally:
        adht.shutdown()
        vdht.shutdown()
    assert counts.get(("parse", "malformed")) == 1, counts
    assert counts.get(("validator", "bad_signature"), 0) + counts.get(("validator", "unsigned"), 0) >= 1, counts
    assert counts.get(("round", "late")) == 2, counts


# -- a real Prometheus server -------------------------------------------------------------------
@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    exe = apt_install("prometheus", "prometheus")
    if exe is None:
        pytest.skip(
            "Prometheus is not installed and could not be installed with `apt-get install prometheus` "
            "(needs Debian/Ubuntu, root and the package archive); install it to run this test"
        )
    return exe


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


class _MetricsSwarm(Swarm):
    """Swarm whose bootstrap node also serves metrics."""

    def __init__(self, workdir: Path, boot_args: list[str]):
        self.workdir = workdir
        self.procs = {}
        self.boot, self.maddrs = start_bootstrap(workdir, boot_args)


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "onebyte.json"
EVAL_METRICS = ("onebyte_eval_accuracy_ratio", "onebyte_eval_loss")


def _dashboard_queries() -> list[str]:
    def walk(o):
        if isinstance(o, dict):
            if "expr" in o:
                yield o["expr"]
            for v in o.values():
                yield from walk(v)
        elif isinstance(o, list):
            for v in o:
                yield from walk(v)

    return [e.replace("$instance", ".*") for e in walk(json.loads(DASHBOARD.read_text()))]


def _every_dashboard_query_has_data(prom_port: int, evaluating: str, swarm) -> None:
    """Each panel's query returns series; held-out metrics come only from the peer that evaluates (the other's are
    absent, not 0). Rates need a few scrapes: poll for a while."""
    queries = _dashboard_queries()
    assert len(queries) >= 20
    deadline = time.time() + 90
    while True:
        empty = [q for q in queries if not _query(prom_port, q)]
        if not empty or time.time() > deadline:
            break
        time.sleep(2)
    assert not empty, f"dashboard queries with no data: {empty}\n" + swarm.log("a")[-2000:]
    for name in EVAL_METRICS:
        assert {r["metric"]["instance"] for r in _query(prom_port, name)} == {evaluating}, name


def test_prometheus_scrapes_a_live_swarm_and_sees_the_round_advance(tmp_path, prometheus_bin):
    ports = {"a": free_port(), "b": free_port(), "boot": free_port()}
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: onebyte-peers\n    static_configs: [{{targets: ['127.0.0.1:{ports['a']}', "
        f"'127.0.0.1:{ports['b']}']}}]\n"
        f"  - job_name: onebyte-bootstrap\n    static_configs: [{{targets: ['127.0.0.1:{ports['boot']}']}}]\n"
    )
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    prom_log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=prom_log,
        stderr=subprocess.STDOUT,
    )
    try:
        with _MetricsSwarm(tmp_path, ["--metrics-port", str(ports["boot"])]) as swarm:
            common = ["--run-id", "prom", "--rounds", "14", "--batch-size", "4"]
            # the second peer joins in client mode (as behind NAT): it reaches the swarm, nobody reaches it
            swarm.peer("b", *common, *WAIT, "--shard", "1/2", "--client-mode", "--metrics-port", str(ports["b"]))
            swarm.wait_waiting("b")
            swarm.peer(
                "a",
                *common,
                "--new-run",
                "--start-delay",
                START,
                *TINY,
                "--round-seconds",
                "2",
                "--contribs-per-round",
                "2",
                "--metrics-port",
                str(ports["a"]),
                "--eval-every",
                "2",
                "--eval-every-size",
                "8",
            )
            first: dict[str, float] = {}
            advanced: set[str] = set()
            deadline = time.time() + 150
            while time.time() < deadline and len(advanced) < 2:
                for name in "ab":
                    if swarm.procs[name].poll() not in (None, 0):
                        raise AssertionError(f"{name} failed:\n" + swarm.log(name)[-3000:])
                try:
                    results = _query(prom_port, 'onebyte_round{job="onebyte-peers"}')
                except OSError:  # Prometheus still starting
                    results = []
                for res in results:
                    name = "a" if res["metric"]["instance"].endswith(f":{ports['a']}") else "b"
                    value = float(res["value"][1])
                    first.setdefault(name, value)
                    if value > first[name]:
                        advanced.add(name)
                time.sleep(1.0)
            assert advanced == {"a", "b"}, (
                f"round seen by Prometheus: first {first}, advanced {advanced}\n" + swarm.log("b")[-2000:]
            )
            made = _query(prom_port, 'sum(onebyte_contributions_made_total{job="onebyte-peers"})')
            assert made and float(made[0]["value"][1]) > 0
            applied = _query(
                prom_port, f'sum by (origin) (onebyte_contributions_applied_total{{instance="127.0.0.1:{ports["b"]}"}})'
            )
            assert {r["metric"]["origin"] for r in applied} == {"local", "remote"}
            info = _query(prom_port, "onebyte_peer_info")
            assert {r["metric"]["run_id"] for r in info} == {"prom"} and {r["metric"]["model"] for r in info} == {
                "tiny-llama"
            }
            uptime = _query(prom_port, "onebyte_bootstrap_uptime_seconds")
            assert uptime and float(uptime[0]["value"][1]) > 0
            table = _query(prom_port, "onebyte_bootstrap_routing_table_peers")
            assert (
                table and float(table[0]["value"][1]) >= 1
            )  # peer a (a server) is in the bootstrap node's routing table
            up = _query(prom_port, "up")
            assert len(up) == 3 and all(r["value"][1] == "1" for r in up), up
            _every_dashboard_query_has_data(prom_port, evaluating=f"127.0.0.1:{ports['a']}", swarm=swarm)
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        prom_log.close()
