"""Issue 13, items 1 and 2: strict, bounded parsing of every byte another peer sends, and bounded
resources against every peer. Real hivemind DHT nodes and real `onebyte peer` processes on
loopback; the attackers are DHT nodes of their own (tests/adversaries/hostile_client.py), a DHT node that
stores and serves anything (no validator), and hostile catch-up sources (tests/adversaries/hostile_transfer.py).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from functools import partial

import msgpack
import psutil
import pytest
from hivemind.dht import DHT
from hivemind.dht.routing import DHTID
from hivemind.utils import get_dht_time

from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import RUNS_KEY, ContributionRecord, Heartbeat, hash_key, manifest_key, peers_key, round_key
from tests.adversaries.hostile_client import SER, known_nodes, signed, store_raw, subkey_of
from tests.support.figures import record
from tests.support.swarm import ROOT, START, TINY, WAIT, Swarm

DEEP = b"\x91" * 600 + b"\x01"  # an array nested 600 deep: msgpack decodes it, pickle (hivemind's pipe) cannot
DEEP_MAP = b"\x81\xa1k" * 300 + b"\x01"  # maps nested 300 deep
EXT_FULL = msgpack.packb([msgpack.ExtType(i % 120 + 1, b"x") for i in range(1000)])  # 1,000 unknown extension objects
TUPLE_EXT = SER.dumps((1, 2, 3))  # hivemind's own tuple extension: onebyte records never hold one
BAD_VALUES = {
    "nested_600": DEEP,
    "nested_maps_300": DEEP_MAP,
    "nested_9": b"\x91" * 9 + b"\x01",
    "extension_types": EXT_FULL,
    "tuple_extension": TUPLE_EXT,
}


def key_kinds(run: str) -> dict[str, str]:
    return {
        "round": round_key(run, 5),
        "hash": hash_key(run, 6),
        "peers": peers_key(run),
        "manifest": manifest_key(run),
        "runs": RUNS_KEY,
    }


def _two_nodes():
    reader, attacker = Identity(), Identity()
    r_dht = start_dht(reader, [])
    a_dht = start_dht(attacker, [str(a) for a in r_dht.get_visible_maddrs()])
    deadline = time.time() + 30
    while known_nodes(a_dht) < 1 and time.time() < deadline:
        time.sleep(0.2)
    return (reader, r_dht), (attacker, a_dht)


def test_nested_and_extension_values_are_refused_under_every_key_kind():
    """Validly signed values nested too deep or holding extension types, under every key kind:
    every node refuses them (counted by reason) and the honest record next to them reads fine."""
    (reader, r_dht), (attacker, a_dht) = _two_nodes()
    try:
        run, exp = "nest13", get_dht_time() + 600
        honest = RecordClient(r_dht, reader)
        answers = {}
        for kind, key in key_kinds(run).items():
            for name, value in BAD_VALUES.items():
                ident = Identity()
                answers[(kind, name)] = store_raw(a_dht, key, subkey_of(ident), value, exp, sign_with=ident)
        assert honest._store(
            round_key(run, 5), ContributionRecord(round=5, published_at=1.0, codes=b"\x01").pack(), exp
        )
        t0 = time.time()
        records = honest.read_round(run, 5)
        seconds = time.time() - t0
        counts = honest.validator_rejections()
    finally:
        a_dht.shutdown()
        r_dht.shutdown()
    assert all(a and not any(a) for a in answers.values()), {k: a for k, a in answers.items() if not a or any(a)}
    assert list(records) == [reader.peer_id]
    assert counts["too_deep"] >= 3 * 5 and counts["extension_type"] >= 2 * 5, counts
    record(
        "nested_values_refused",
        key_kinds=sorted(key_kinds("x")),
        values=sorted(BAD_VALUES),
        stores=len(answers),
        refused_by_reason=dict(counts),
        honest_read_seconds=seconds,
    )


async def _plant(keys: list[str], exp: float, ext_subkeys: int, _dht, node) -> int:
    """Runs in a DHT process, built there (hivemind's pipe to it breaks on arguments over ~16 KB):
    put poison straight into its storage, past any validator (a node without onebyte's bounds, or
    one that stored it before it had them). For each key: validly signed records nested 600 deep,
    maps nested 300 deep and 1,000 extension objects, and ``ext_subkeys`` subkeys that are unknown
    extension types (hivemind's own decoder warns once per object when it reads them)."""
    n = 0
    for key in keys:
        key_id = DHTID.generate(source=key)
        for value in (DEEP, EXT_FULL, DEEP_MAP):
            ident = Identity()
            node.protocol.storage.store_subkey(
                key_id, subkey_of(ident), signed(ident, key, subkey_of(ident), value, exp), exp
            )
            n += 1
        for i in range(
            ext_subkeys
        ):  # codes hivemind has not registered (0x40 tuple, 0x50 and 0x51 are), distinct expirations
            node.protocol.storage.store_subkey(
                key_id, msgpack.ExtType(i % 60 + 1, b"%d" % i), b"\x01", exp - 1 - i * 1e-3
            )
            n += 1
    return n


def plant(dht: DHT, keys: list[str], exp: float, ext_subkeys: int = 0) -> int:
    return dht.run_coroutine(partial(_plant, keys, exp, ext_subkeys), return_future=True).result(timeout=120)


def test_a_reader_drops_values_that_got_past_a_validator(tmp_path):
    """Values in a node's own storage that never passed the bounds: reads (crawling and lean)
    return the honest records within the timeout, drop the rest and count them; `onebyte status`
    and `onebyte runs` list what is honest and say in one line what they ignored."""
    (reader, r_dht), (attacker, a_dht) = _two_nodes()
    try:
        run, exp = "plant13", get_dht_time() + 600
        honest = RecordClient(r_dht, reader, timeout=15)
        keys = key_kinds(run)
        assert honest._store(keys["round"], ContributionRecord(round=5, published_at=1.0, codes=b"\x01").pack(), exp)
        hb = Heartbeat(version="0", round=3, sha256="", made=1, rate=0.5)
        assert honest.publish_heartbeat(run, hb, 600)
        for d in (r_dht, a_dht):
            plant(d, list(keys.values()), exp)
        t0 = time.time()
        lean = RecordClient(r_dht, reader, timeout=15, lean_replicas=2)
        lean_rounds = lean.read_round(run, 5)
        rounds = honest.read_round(run, 5)
        peers = honest.read_peers(run)
        seconds = time.time() - t0
        maddrs = [str(a) for a in r_dht.get_visible_maddrs()]
        cli = [sys.executable, "-m", "onebyte.cli"]
        peers_arg = [x for m in maddrs for x in ("--initial-peers", m)]
        status = subprocess.run(
            [*cli, "status", "--run-id", run, *peers_arg], capture_output=True, text=True, timeout=180, cwd=ROOT
        )
        runs = subprocess.run([*cli, "runs", *peers_arg], capture_output=True, text=True, timeout=180, cwd=ROOT)
    finally:
        a_dht.shutdown()
        r_dht.shutdown()
    assert list(rounds) == [reader.peer_id] and list(lean_rounds) == [reader.peer_id]
    assert list(peers) == [reader.peer_id]
    assert honest.rejected["evicted"] >= 3 * 2 and lean.rejected["evicted"] >= 3, (honest.rejected, lean.rejected)
    assert status.returncode == 0, status.stderr[-2000:]
    assert reader.peer_id[:16] in status.stdout and "1 live peer(s)" in status.stdout, status.stdout
    assert "RecursionError" not in status.stderr and "Traceback" not in status.stderr, status.stderr[-2000:]
    assert runs.returncode == 0 and "Traceback" not in runs.stderr, runs.stderr[-2000:]
    record(
        "reader_drops_planted_values",
        read_seconds=seconds,
        rejected=dict(honest.rejected),
        lean_rejected=dict(lean.rejected),
        status_stdout=status.stdout,
        status_stderr_tail=status.stderr[-300:],
        runs_stdout=runs.stdout,
    )


# -- catch-up sources: hostile answers and tarpits against a real Transfer, no swarm -------------------------------


def test_hostile_sources_fail_cleanly_and_tarpits_cost_one_deadline(tmp_path):
    """A joiner's Transfer against real hostile p2p handlers (tests/adversaries/hostile_transfer.py) and an
    honest one: every crash shape of .info is a TransferError; a checkpoint advertised as 1,000
    bytes and streamed without end is cut after 64 KiB past that; a 100 MB message, a stalled
    stream and a 2 MB log line end the fetch; 60 tarpit addresses plus the honest source are
    probed at once: the honest answer comes back and the tarpits cost about one deadline, not 60."""
    import threading

    from onebyte.coordinator_free.seedlog import SeedLog, entry_line
    from onebyte.p2p.transfer import STATE_SLACK_BYTES, ServedState, Transfer, TransferError
    from tests.adversaries.hostile_transfer import CRASH_SHAPES, Node, random_peer_id

    boot_id = Identity()
    boot = start_dht(boot_id)
    maddrs = [str(a) for a in boot.get_visible_maddrs()]
    stats, lock = {}, threading.Lock()
    nodes = {m: Node(m, "src13", maddrs, stats, lock) for m in ("crash", "flood", "bigmsg", "stall", "liar")}
    nodes["flood"].offer = {"round": 3, "sha256": "ab" * 32, "bytes": 1000}
    for n in nodes.values():
        n.register()
    honest_log = SeedLog()
    honest_log.put_line(entry_line(0, "00" * 32, []))
    honest = Transfer(boot, "src13")
    honest.serve(ServedState(honest_log.span, honest_log.lines, honest_log.contributions, lambda: None))
    me = Transfer(start_dht(Identity(), maddrs), "src13")
    pit = tarpit()
    try:
        for n in nodes.values():
            me.connect(n.t.p2p_id, n.t.addrs)
        me.connect(honest.p2p_id, honest.addrs)
        crash = []
        for _ in CRASH_SHAPES:
            try:
                crash.append(("answered", me.info(nodes["crash"].t.p2p_id)))
            except TransferError as e:
                crash.append(("refused", str(e)[:120]))
        offer = me.info(nodes["flood"].t.p2p_id)["checkpoint"]
        rss0 = psutil.Process().memory_info().rss
        failures = {}
        for mode, call in (
            ("flood", lambda: me.fetch_state(nodes["flood"].t.p2p_id, timeout=60)),
            ("bigmsg", lambda: me.fetch_log(nodes["bigmsg"].t.p2p_id, 0, 10)),
            ("stall", lambda: me.fetch_log(nodes["stall"].t.p2p_id, 0, 10)),
            ("liar", lambda: me.fetch_log(nodes["liar"].t.p2p_id, 0, 10)),
        ):
            t0 = time.time()
            try:
                call()
                failures[mode] = ("no error", time.time() - t0)
            except TransferError as e:
                failures[mode] = (str(e)[:160], time.time() - t0)
        rss_growth = psutil.Process().memory_info().rss - rss0
        time.sleep(1)
        flood_sent = stats["flood"]["bytes_sent"]
        candidates = [(random_peer_id(), [f"/ip4/127.0.0.1/tcp/{pit.getsockname()[1]}"]) for _ in range(60)]
        t0 = time.time()
        answers = me.probe([*candidates, (honest.p2p_id, honest.addrs)], deadline=4.0, concurrency=32)
        probe_seconds = time.time() - t0
    finally:
        pit.close()
        for t in (me, honest, *(n.t for n in nodes.values())):
            t.close()
        for n in nodes.values():
            n.dht.shutdown()
        boot.shutdown()
    record(
        "hostile_sources",
        crash_shapes=crash,
        checkpoint_offer=offer,
        failures=failures,
        flood_bytes_sent_by_source=flood_sent,
        rss_growth_mb=rss_growth / 2**20,
        tarpits=len(candidates),
        probe_seconds=probe_seconds,
        honest_answer=answers.get(honest.p2p_id),
    )
    assert all(kind == "refused" for kind, _ in crash), crash
    assert offer == {"round": 3, "sha256": "ab" * 32, "bytes": 1000}
    assert "more than the" in failures["flood"][0] and str(2 * 1000 + STATE_SLACK_BYTES) in failures["flood"][0], (
        failures
    )
    assert "104857600 bytes" in failures["bigmsg"][0], failures
    assert "sent nothing for" in failures["stall"][0], failures
    assert "log line of" in failures["liar"][0], failures
    assert rss_growth < 100 * 2**20, rss_growth  # the 640 MB stream is not in memory
    assert answers[honest.p2p_id] == {"log": [0, 0], "contributions": 0, "checkpoint": None}, answers.get(honest.p2p_id)
    assert sum(isinstance(a, str) for a in answers.values()) == 60
    assert probe_seconds < 60, probe_seconds  # sequentially, 60 stalled dials took ~5 s each (issue 13)


# -- the swarm: 3 honest peers, a poisoning DHT node, hostile catch-up sources, 60 tarpits, a late joiner --------

UNKNOWN_EXT = "Unknown ExtType code"


def tarpit() -> socket.socket:
    """A TCP port that completes handshakes (the kernel does) and never reads or writes a byte."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    return s


def suppressed(text: str) -> int:
    return sum(int(n) for n in re.findall(r"\[\+(\d+) similar lines suppressed", text))


@pytest.mark.long
def test_poisoned_dht_hostile_sources_and_tarpits_leave_honest_peers_on_one_hash(tmp_path):
    """Three honest peers; a DHT node without a validator that holds, under every key they read,
    records nested 600 deep, maps nested 300 deep, values full of extension objects and 2,000
    extension-typed subkeys; `onebyte status` and `runs` through it; then 5 hostile catch-up
    sources (tests/adversaries/hostile_transfer.py) and 60 fake live peers whose addresses stall, and a late
    joiner. Everyone ends on one hash, nobody crashes, the joiner catches up within a bound, its
    memory stays where the others' is, and the logs stay small."""
    from onebyte.logbounds import BURST

    run, rounds, tarpits = "bounds13", 90, 60
    names = ("a", "b", "c")
    with Swarm(tmp_path) as swarm:
        common = [
            "--run-id",
            run,
            "--rounds",
            str(rounds),
            "--batch-size",
            "4",
            "--checkpoint-interval",
            "0",
            "--threads",
            "1",
        ]
        swarm.peer("b", *common, *WAIT, "--shard", "1/3")
        swarm.peer("c", *common, *WAIT, "--shard", "2/3", "--checkpoint-dir", str(tmp_path / "c.ck"))
        swarm.wait_waiting("b", "c")
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
            "--hash-every",
            "3",
            "--shard",
            "0/3",
            "--checkpoint-dir",
            str(tmp_path / "a.ck"),
        )
        peers_arg = [x for m in swarm.maddrs for x in ("--initial-peers", m)]
        # hostile catch-up sources and 60 fake live peers that stall: started now, they wait for a hash round to forge
        # an offer for
        pit = tarpit()
        out = tmp_path / "hostile.json"
        hostile_log = open(tmp_path / "hostile.log", "w")
        hostile = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.adversaries.hostile_transfer",
                "--run-id",
                run,
                *peers_arg,
                "--tarpits",
                str(tarpits),
                "--tarpit-port",
                str(pit.getsockname()[1]),
                "--out",
                str(out),
            ],
            cwd=ROOT,
            stdout=hostile_log,
            stderr=subprocess.STDOUT,
        )
        evil = None
        try:
            swarm.wait_for_round("a", 1, timeout=240)
            # a DHT node that stores and serves anything: every key the peers read, poisoned
            evil = DHT(initial_peers=swarm.maddrs, start=True)
            exp = get_dht_time() + 900
            keys = [round_key(run, r) for r in range(rounds)] + [hash_key(run, r) for r in range(0, rounds, 3)]
            keys += [peers_key(run), manifest_key(run), RUNS_KEY]
            planted = plant(evil, keys, exp, ext_subkeys=2000)
            log_before = {n: (tmp_path / f"{n}.log").stat().st_size for n in names}
            poisoned_at = time.time()
            # the run's status and list, read through the poisoned node (in parallel: each is a fresh process)
            cli = [sys.executable, "-m", "onebyte.cli"]
            status_p = subprocess.Popen(
                [*cli, "status", "--run-id", run, *peers_arg],
                cwd=ROOT,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            runs_p = subprocess.Popen(
                [*cli, "runs", *peers_arg], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            deadline = time.time() + 240
            while not (out.exists() and "tarpits_ready" in json.loads(out.read_text())):
                assert time.time() < deadline and hostile.poll() is None, (tmp_path / "hostile.log").read_text()[-3000:]
                time.sleep(1)
            ready_round = max(
                json.loads(line)["round"] for line in (tmp_path / "a.rounds.jsonl").read_text().splitlines()
            )
            late = swarm.peer("late", *common, "--shard", "1/3")
            rss = {n: 0 for n in (*names, "late")}
            while late.poll() is None:
                for n in rss:
                    try:
                        rss[n] = max(rss[n], psutil.Process(swarm.procs[n].pid).memory_info().rss)
                    except psutil.Error:
                        pass
                time.sleep(0.5)
            codes = {n: swarm.wait(n, timeout=300) for n in (*names, "late")}
            hostile_stats = json.loads(out.read_text())
            status_out, status_err = status_p.communicate(timeout=240)
            runs_out, runs_err = runs_p.communicate(timeout=240)
        finally:
            hostile.terminate()
            try:
                hostile.wait(timeout=30)
            except subprocess.TimeoutExpired:
                hostile.kill()
            pit.close()
            if evil is not None:
                evil.shutdown()
        attack_seconds = time.time() - poisoned_at
        logs = {n: swarm.log(n) for n in (*names, "late")}
        growth = {n: (tmp_path / f"{n}.log").stat().st_size - log_before[n] for n in names}
        reports = {n: swarm.report(n) for n in (*names, "late")}
        caught = [
            json.loads(line)
            for line in (tmp_path / "late.rounds.jsonl").read_text().splitlines()
            if '"catchup"' in line
        ]

    ext_lines = {n: logs[n].count(UNKNOWN_EXT) for n in logs}
    probes = [
        tuple(map(int, m)) for m in re.findall(r"(\d+) of (\d+) peer\(s\) asked cannot serve catch-up", logs["late"])
    ]
    record(
        "poisoned_dht_hostile_sources_tarpits",
        planted_entries=planted,
        poisoned_keys=len(keys),
        attack_seconds=attack_seconds,
        log_growth_bytes=growth,
        unknown_ext_lines=ext_lines,
        unknown_ext_lines_suppressed={n: suppressed(t) for n, t in logs.items()},
        peak_rss_mb={n: v / 2**20 for n, v in rss.items()},
        hostile=hostile_stats,
        tarpits=tarpits,
        catchups=caught,
        probes=probes,
        ready_round=ready_round,
        exit_codes=codes,
        final_hashes={n: r["final_sha256"][:12] for n, r in reports.items()},
        rejected={n: r["rejected"] for n, r in reports.items()},
        status_stdout=status_out,
        runs_stdout=runs_out,
        status_stderr_tail=status_err[-300:],
        runs_stderr_tail=runs_err[-300:],
    )
    # nobody crashed, everybody applied every round and ends on one hash
    assert codes == {n: 0 for n in codes}, {n: logs[n][-3000:] for n, c in codes.items() if c}
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {
        n: r["final_sha256"][:12] for n, r in reports.items()
    }
    assert all(r["last_round"] == rounds - 1 for r in reports.values())
    for n, text in logs.items():
        for bad in ("RecursionError", "ZeroDivisionError", "DHTUnavailable"):
            assert bad not in text, (n, bad)
    # `onebyte status` and `onebyte runs` read through the poisoned node
    assert status_p.returncode == 0 and all(reports[n]["peer_id"][:16] in status_out for n in names), (
        status_out,
        status_err[-2000:],
    )
    assert runs_p.returncode == 0 and run in runs_out, (runs_out, runs_err[-2000:])
    # the late joiner met the tarpits and the hostile sources, and caught up anyway, within a bound
    # (from scratch, or after the first rounds: when every attempt fails for 30 s it reads rounds from the DHT
    # meanwhile)
    assert caught and caught[0]["from_round"] < ready_round <= caught[0]["round"], caught
    assert caught[0]["seconds"] < 90, caught
    assert hostile_stats["crash"]["info_calls"] >= 1 and hostile_stats["liar"]["info_calls"] >= 1, hostile_stats
    # a 640 MB checkpoint stream advertised as 1,000 bytes is cut: the joiner's memory stays where the others' is
    assert rss["late"] < max(rss[n] for n in names) + 250 * 2**20, rss
    # log volume: hivemind's per-object warnings are rate-limited and summarised, each peer's log stays small
    assert all(ext_lines[n] <= 2 * BURST * (attack_seconds / 60 + 2) for n in names), ext_lines
    assert all(g < 2_000_000 for g in growth.values()), growth
