"""Round settle time over an emulated wide-area network: N real peers, each in its own namespace.

Topology (made once, removed at the end): a namespace ``hub`` holds a Linux bridge; the bootstrap
node, a watcher and N ``onebyte peer`` processes each live in their own namespace, plugged into the
bridge by a veth pair (10.233.0.0/24, addresses that exist nowhere else). Each of those namespaces
shapes its own veth's egress with ``tc qdisc replace dev <veth> root netem delay <D> loss <L>``
(default 50ms and 1%); the hub's ends are not shaped. So every packet between two nodes crosses
exactly one netem (the sender's): one-way delay D, round trip 2D (100 ms), and each direction
loses L of its packets (1%). Nothing leaves the namespaces.

For each round period R (a fresh bootstrap node and run per R; the manifest derives
publish_margin and settle_seconds from R, onebyte/peer/join.py), the N-1 members start and wait for
the run, then the creator starts it (--start-delay). Every peer runs the tiny task (tests/support/
swarm.py's TINY), --threads 1, batch size 1 and few contributions per round, so contributions take
milliseconds and the peers publish early in the round; what is measured is the network and the
DHT, under the CPU contention of N+2 processes (and their DHT children) on this machine's cores.

Measured per round, from the peers' --round-log and --report:
  * latency: applied - close(r) per peer (``latency_seconds``); the round's value is the max over
    peers, i.e. from round close until every peer has read every record and applied it. The
    protocol waits settle_seconds after close before reading, so that is its floor.
  * lost: a record the watcher saw (published_at <= close) that a peer's round set lacks; counted
    per (record, reader) and as records missing from at least one peer's set.
  * late / empty: a round a peer applied more than settle + R after close (it fell behind), or
    applied with no contributions / with fewer than the swarm's records.
  * one hash: the peers' final weight hashes; hash mismatches, repairs, missed deadlines.
The watcher (a client-mode DHT node: it stores nothing for others) polls each round's key from the
round's open until it has every peer's record (or settle + 5 s after close) and records when each
record first became readable there (first_seen - published_at, an upper bound: a read takes time)
and how long one read of a round key takes over this network.

    sudo python bench/wan_settle.py                        # R = 2,4,6,10 s; 16 peers; 50ms / 1%
    sudo python bench/wan_settle.py --periods 4 --peers 4  # a quick check

Needs root (ip netns) and tc (iproute2). Results: bench/results/wan_settle.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wire_breakdown import peer_env

from harness import ROOT, log, machine_info, percentile, table, uptime, write_results
from harness.netns import Namespace, available
from harness.wan import WanSwitch

TINY = "--model tiny-llama --dataset drugreview --lr 1e-3 --eps 1e-3 --table-log2 20 --max-length 32".split()
SUBNET = "10.233.0"
BOOT_IP, WATCH_IP = f"{SUBNET}.1", f"{SUBNET}.2"


# round trips of TCP connects to a closed port (SYN out, RST back): what the emulated network adds
RTT = """
import socket, time
out = []
for _ in range(10):
    s = socket.socket()
    s.settimeout(5)
    t = time.perf_counter()
    try:
        s.connect(("%ADDR%", 9))
    except OSError:
        pass
    out.append(round((time.perf_counter() - t) * 1000, 1))
    s.close()
print(sorted(out))
"""


def peer_ip(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


def cli() -> list[str]:
    return [sys.executable, "-m", "onebyte.cli"]


# -- the watcher (runs inside its namespace: python bench/wan_settle.py --_watch JSON) ------------
def watch(run_id: str, maddrs: list[str], host: str, out: str, peers: int, rounds: int, tail: float) -> None:
    from onebyte.dht.client import DHTUnavailable, RecordClient, start_dht
    from onebyte.dht.identity import Identity

    ident = Identity()
    dht = start_dht(ident, maddrs, host_maddrs=[f"/ip4/{host}/tcp/0"], client_mode=True)
    client = RecordClient(dht, ident)
    f = open(out, "w")

    def emit(obj: dict) -> None:
        f.write(json.dumps(obj) + "\n")
        f.flush()

    m = None
    while m is None:
        try:
            found = client.read_manifests(run_id, lambda v: v)
        except DHTUnavailable:
            found = {}
        ms = [v for v in found.values() if isinstance(v, dict) and v.get("run_id") == run_id]
        m = min(ms, key=lambda v: v["created_at"]) if ms else None
        if m is None:
            time.sleep(1.0)
    emit(
        {
            "event": "manifest",
            "manifest": {k: m[k] for k in ("start_time", "round_seconds", "publish_margin", "settle_seconds")},
        }
    )
    start, R, settle = m["start_time"], m["round_seconds"], m["settle_seconds"]
    seen: dict[int, set] = {r: set() for r in range(rounds)}
    while True:
        now = time.time()
        active = [
            r
            for r in range(rounds)
            if start + r * R <= now <= start + (r + 1) * R + settle + tail and len(seen[r]) < peers
        ]
        if not active and now > start + rounds * R + settle + tail:
            break
        for r in active:
            t0 = time.time()
            try:
                recs = client.read_round(run_id, r)
            except DHTUnavailable as e:
                emit({"event": "read_failed", "round": r, "t0": t0, "t1": time.time(), "error": str(e)[:200]})
                continue
            t1 = time.time()
            emit({"event": "read", "round": r, "t0": t0, "t1": t1, "records": len(recs)})
            for pid, rec in recs.items():
                if pid not in seen[r]:
                    seen[r].add(pid)
                    emit(
                        {"event": "seen", "round": r, "peer": pid, "published_at": rec.published_at, "t0": t0, "t1": t1}
                    )
        if not active:
            time.sleep(0.2)
    dht.shutdown()


# -- one round period ------------------------------------------------------------------------------
def run_period(R: float, rounds: int, args, nodes: dict, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    n = args.peers
    run_id = f"wan-{os.getpid()}-{R:g}"
    load_before = uptime()
    t_begin = time.time()
    log(f"R={R:g}s: {n} peers, {rounds} rounds, logs in {workdir}; {load_before}")
    boot_out = workdir / "bootstrap.out"
    boot = nodes["boot"].popen(
        [*cli(), "bootstrap", "--host-maddrs", f"/ip4/{BOOT_IP}/tcp/0", "--no-relay"],
        stdout=open(boot_out, "w"),
        stderr=open(workdir / "bootstrap.log", "w"),
        cwd=ROOT,
        env=peer_env(),
    )
    procs: list[subprocess.Popen] = []
    watcher = None
    try:
        maddrs = _wait_maddrs(boot, boot_out)
        common = [
            "--run-id", run_id, "--rounds", str(rounds), "--no-progress", "--threads", "1",
            "--batch-size", str(args.batch_size), "--join-timeout", "900", "--no-relay",
        ]  # fmt: skip
        for a in maddrs:
            common += ["--initial-peers", a]

        def start(i: int, extra: list[str]) -> subprocess.Popen:
            argv = [
                *cli(), "peer", *common, "--shard", f"{i}/{n}", "--host-maddrs", f"/ip4/{peer_ip(i)}/tcp/0",
                "--report", str(workdir / f"peer{i}.json"), "--round-log", str(workdir / f"peer{i}.rounds.jsonl"),
                *extra,
            ]  # fmt: skip
            return nodes[f"p{i}"].popen(
                argv, stdout=open(workdir / f"peer{i}.log", "w"), stderr=subprocess.STDOUT, cwd=ROOT, env=peer_env()
            )

        procs = [None] * n
        for i in range(1, n):
            procs[i] = start(i, [])
        _wait_waiting(procs, workdir, range(1, n), timeout=900)
        log(f"  {n - 1} members wait for the run; starting the creator; {uptime()}")
        if args.watch:
            watcher = nodes["watch"].popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--_watch",
                    json.dumps([run_id, maddrs, WATCH_IP, str(workdir / "watch.jsonl"), n, rounds, args.watch_tail]),
                ],  # fmt: skip
                stdout=open(workdir / "watch.log", "w"),
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=peer_env(),
            )
        procs[0] = start(
            0,
            [
                "--new-run",
                "--start-delay",
                str(args.start_delay),
                *TINY,
                "--round-seconds",
                f"{R:g}",
                "--contribs-per-round",
                str(args.contribs),
            ],  # fmt: skip
        )
        _follow(procs, workdir, timeout=args.start_delay + rounds * R + 600)
        if watcher is not None:
            try:
                watcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                watcher.terminate()
    finally:
        for p in [*[p for p in procs if p is not None], *([watcher] if watcher else []), boot]:
            if p.poll() is None:
                p.terminate()
        for p in [*[p for p in procs if p is not None], *([watcher] if watcher else []), boot]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in nodes.values():  # the next period starts from empty namespaces (p2pd daemons included)
            ns.procs.clear()
            for pid in ns.pids():
                os.kill(pid, signal.SIGKILL)
    return analyse(workdir, n, rounds, args, load_before, time.time() - t_begin)


def _wait_maddrs(boot: subprocess.Popen, out: Path) -> list[str]:
    deadline = time.time() + 180
    while time.time() < deadline:
        lines = out.read_text().splitlines() if out.exists() else []
        maddrs = [ln.strip() for ln in lines if re.match(r"^/ip4/\S+/p2p/\S+$", ln.strip())]
        if maddrs and any("bootstrap node running" in ln for ln in lines):
            return maddrs
        if boot.poll() is not None:
            raise RuntimeError(f"bootstrap node exited with code {boot.returncode}; see {out.parent}")
        time.sleep(0.2)
    raise RuntimeError("bootstrap node printed no address within 180 s")


def _wait_waiting(procs, workdir: Path, idx, timeout: float) -> None:
    deadline = time.time() + timeout
    pending = set(idx)
    last = 0.0
    while pending:
        for i in list(pending):
            if "round=-1 waiting up to" in (workdir / f"peer{i}.log").read_text(errors="replace"):
                pending.discard(i)
            elif procs[i].poll() is not None:
                raise RuntimeError(f"peer {i} exited early: " + _tail(workdir / f"peer{i}.log"))
        if time.time() > deadline:
            raise TimeoutError(f"{len(pending)} members did not start within {timeout:.0f}s")
        if time.time() - last > 30:
            log(f"  {len(procs) - 1 - len(pending)}/{len(procs) - 1} members waiting")
            last = time.time()
        time.sleep(0.5)


def _follow(procs, workdir: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    last = 0.0
    while any(p.poll() is None for p in procs):
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed:
            raise RuntimeError(
                f"peer {failed[0]} failed (exit {procs[failed[0]].returncode}): "
                + _tail(workdir / f"peer{failed[0]}.log")
            )
        if time.time() > deadline:
            raise TimeoutError(f"peers did not finish within {timeout:.0f}s; see {workdir}")
        if time.time() - last > 30:
            done = sum(_lines(workdir / f"peer{i}.rounds.jsonl") for i in range(len(procs)))
            log(f"  {done} peer-rounds applied; {uptime()}")
            last = time.time()
        time.sleep(0.5)


def _tail(f: Path) -> str:
    return " | ".join(f.read_text(errors="replace").strip().splitlines()[-5:]) if f.exists() else "(no log)"


def _lines(f: Path) -> int:
    return sum(1 for ln in f.read_text().splitlines() if ln.strip()) if f.exists() else 0


def _jsonl(f: Path) -> list[dict]:
    return [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.exists() else []


# -- analysis ----------------------------------------------------------------------------------------
def analyse(workdir: Path, n: int, rounds: int, args, load_before: str, wall: float) -> dict:
    reports = [json.loads((workdir / f"peer{i}.json").read_text()) for i in range(n)]
    logs = [[e for e in _jsonl(workdir / f"peer{i}.rounds.jsonl") if e.get("event") == "applied"] for i in range(n)]
    m = reports[0]["manifest"]
    R, margin, settle, start = m["round_seconds"], m["publish_margin"], m["settle_seconds"], m["start_time"]
    close = lambda r: start + (r + 1) * R  # noqa: E731
    watch = _jsonl(workdir / "watch.jsonl")
    seen = [e for e in watch if e["event"] == "seen"]
    reads = [e for e in watch if e["event"] == "read"]
    truth = {r: sum(1 for e in seen if e["round"] == r and e["published_at"] <= close(r)) for r in range(rounds)}
    late_records = sum(1 for e in seen if e["published_at"] > close(e["round"]))
    by_round = {}
    for i, lg in enumerate(logs):
        for e in lg:
            by_round.setdefault(e["round"], {})[i] = e
    rows = []
    for r in range(rounds):
        got = by_round.get(r, {})
        counts = [e["peers"] for e in got.values()]
        want = max(truth.get(r, 0), max(counts, default=0)) if watch else max(counts, default=0)
        lats = [e["latency_seconds"] for e in got.values()]
        rows.append(
            {
                "round": r,
                "applied_by": len(got),
                "records_seen_by_watcher": truth.get(r) if watch else None,
                "records_min": min(counts, default=0),
                "records_max": max(counts, default=0),
                "missing_pairs": sum(want - c for c in counts) + (n - len(got)) * want,
                "records_not_everywhere": want - min(counts, default=0),
                "contributions_min": min((e["contributions"] for e in got.values()), default=0),
                "contributions_max": max((e["contributions"] for e in got.values()), default=0),
                "latency_max_s": max(lats, default=None),
                "latency_median_s": percentile(lats, 0.5, empty=None),
                "late_peers": sum(1 for x in lats if x > settle + R),
                "empty_peers": sum(1 for e in got.values() if e["contributions"] == 0),
                "short_peers": sum(1 for c in counts if c < want),
            }
        )
    steady = [row for row in rows if row["round"] >= 1]  # round 0 may open before every peer has warmed up
    lat = [row["latency_max_s"] for row in steady if row["latency_max_s"] is not None]
    vis = [e["t1"] - e["published_at"] for e in seen]
    vis_close = [e["t1"] - close(e["round"]) for e in seen]
    pub_offset = [e["published_at"] - (close(e["round"]) - R) for e in seen]
    log_text = [(workdir / f"peer{i}.log").read_text(errors="replace") for i in range(n)]
    full = [row for row in steady if row["records_min"] == n and row["applied_by"] == n]
    res = {
        "round_seconds": R,
        "publish_margin": margin,
        "settle_seconds": settle,
        "hash_every": m["hash_every"],
        "contribs_per_round": m["contribs_per_round"],
        "peers": n,
        "rounds": rounds,
        "per_round": rows,
        "steady_rounds": len(steady),
        "latency_median_s": percentile(lat, 0.5),
        "latency_p95_s": percentile(lat, 0.95),
        "latency_max_s": max(lat, default=None),
        "latency_over_settle_median_s": percentile(lat, 0.5) - settle if lat else None,
        "rounds_with_every_record_at_every_peer": len(full),
        "records_lost_pairs": sum(row["missing_pairs"] for row in steady),
        "records_not_at_every_peer": sum(row["records_not_everywhere"] for row in steady),
        "late_peer_rounds": sum(row["late_peers"] for row in steady),
        "empty_peer_rounds": sum(row["empty_peers"] for row in steady),
        "short_peer_rounds": sum(row["short_peers"] for row in steady),
        "rounds_applied_per_peer": [r["rounds_applied"] for r in reports],
        "final_hashes": len({r["final_sha256"] for r in reports}),
        "one_hash": len({r["final_sha256"] for r in reports}) == 1,
        "hash_mismatches": sum(r["hash_mismatches"] for r in reports),
        "repairs": sum(r["repairs"] for r in reports),
        "made": sum(r["contributions_made"] for r in reports),
        "published": sum(r["contributions_published"] for r in reports),
        "missed_deadline": sum(r["missed_deadline"] for r in reports),
        "publish_failed_lines": sum(t.count("publish failed") + t.count("store of") for t in log_text),
        "read_retry_lines": sum(t.count("read failed") for t in log_text),
        "read_gave_up_lines": sum(t.count("could not be read") for t in log_text),
        "catchups": sum(sum(r["catchups"].values()) for r in reports),
        "watcher": {
            "records_seen": len(seen),
            "records_published_after_close": late_records,
            "publish_offset_in_round_s": {"median": percentile(pub_offset, 0.5), "max": max(pub_offset, default=None)},
            "visible_after_publish_s": {
                "median": percentile(vis, 0.5),
                "p95": percentile(vis, 0.95),
                "max": max(vis, default=None),
            },
            "visible_after_close_max_s": max(vis_close, default=None),
            "read_seconds": {
                "n": len(reads),
                "median": percentile([e["t1"] - e["t0"] for e in reads], 0.5),
                "p95": percentile([e["t1"] - e["t0"] for e in reads], 0.95),
                "max": max((e["t1"] - e["t0"] for e in reads), default=None),
            },
            "read_failed": sum(1 for e in watch if e["event"] == "read_failed"),
        }
        if watch
        else None,
        "wall_seconds": wall,
        "load_before": load_before,
        "load_after": uptime(),
    }
    return res


# -- main ----------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--periods", default="2,4,6,10", help="round periods R in seconds (default: %(default)s)")
    p.add_argument("--peers", type=int, default=16)
    p.add_argument("--round-budget", type=float, default=40.0, help="rounds per period = max(6, this / R)")
    p.add_argument("--contribs", type=int, default=2, help="the run's contribs_per_round")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--delay", type=float, default=0.05, help="one-way delay of every packet, seconds")
    p.add_argument("--loss", type=float, default=0.01, help="share of packets lost, each direction")
    p.add_argument("--start-delay", type=float, default=30.0, help="the creator's --start-delay")
    p.add_argument("--no-watch", dest="watch", action="store_false", help="no watcher node")
    p.add_argument("--watch-tail", type=float, default=5.0, help="the watcher reads a round until settle + this")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--_watch", dest="watch_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.watch_worker:
        watch(*json.loads(args.watch_worker))
        return 0
    if not available() or shutil.which("tc") is None:
        p.error("needs root, ip and tc (iproute2)")
    periods = [float(x) for x in args.periods.split(",") if x]

    def on_signal(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    workroot = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="onebyte-wan-"))
    tag = f"obw{os.getpid() % 100000}"
    load_start = uptime()
    log(f"load at start: {load_start}")
    nodes: dict[str, Namespace] = {}
    switch = None
    runs, failures, switch_stats, rtt = [], [], {}, None
    interrupted = False
    t_all = time.time()
    try:
        names = [("boot", BOOT_IP), ("watch", WATCH_IP)] + [(f"p{i}", peer_ip(i)) for i in range(args.peers)]
        addrs = {}
        for name, addr in names:
            nodes[name] = Namespace(f"{tag}{name}").create()
            addrs[nodes[name]] = addr
        switch = WanSwitch(addrs, delay=args.delay, loss=args.loss).start()
        log(f"{len(nodes)} namespaces on the WAN switch: delay {args.delay * 1000:g} ms, loss {args.loss:.1%}")
        rtt = nodes["p0"].run([sys.executable, "-c", RTT.replace("%ADDR%", BOOT_IP)], timeout=60).stdout.strip()
        log(f"TCP connect round trips p0 -> boot (ms, refused port): {rtt}")
        for R in periods:
            rounds = max(6, math.ceil(args.round_budget / R))
            try:
                r = run_period(R, rounds, args, nodes, workroot / f"R{R:g}")
            except (RuntimeError, TimeoutError) as e:
                log(f"R={R:g} FAILED: {e}")
                failures.append({"round_seconds": R, "error": str(e)})
                continue
            runs.append(r)
            w = r["watcher"] or {}
            log(
                f"  -> R={R:g}: latency median {r['latency_median_s']:.2f}s max {r['latency_max_s']:.2f}s "
                f"(settle {r['settle_seconds']:g}s), lost pairs {r['records_lost_pairs']}, "
                f"late {r['late_peer_rounds']}, "
                f"empty {r['empty_peer_rounds']}, one hash {r['one_hash']}; visible after publish p95 "
                f"{(w.get('visible_after_publish_s') or {}).get('p95', float('nan')):.2f}s"
            )
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping processes and deleting namespaces; writing what was measured")
    finally:
        for ns in nodes.values():
            ns.close()
        if switch is not None:
            switch_stats = switch.close()
        if not args.workdir and not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    results = {
        "benchmark": "wan_settle",
        "interrupted": interrupted,
        "config": {k: v for k, v in vars(args).items() if k != "watch_worker"},
        "network": {
            "topology": "one namespace per node, each with a TUN device served by one user-space switch "
            "(bench/harness/wan.py): this kernel has no sch_netem",
            "one_way_delay_s": args.delay,
            "rtt_s": 2 * args.delay,
            "loss_each_direction": args.loss,
            "tcp_connect_rtt_ms_p0_to_boot": rtt,
            "switch": switch_stats,
        },
        "machine": machine_info(1)
        | {"load_at_start": load_start, "load_at_end": uptime(), "seconds": time.time() - t_all},
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "runs": runs,
        "failures": failures,
    }
    out = write_results("wan_settle", results, args.out)
    rows = [
        (
            r["round_seconds"], r["publish_margin"], r["settle_seconds"], r["steady_rounds"], r["latency_median_s"],
            r["latency_max_s"], (r["watcher"] or {}).get("visible_after_publish_s", {}).get("p95"),
            r["records_lost_pairs"], r["late_peer_rounds"], r["empty_peer_rounds"], r["one_hash"],
        )
        for r in runs
    ]  # fmt: skip
    print(
        table(
            rows,
            ("R", "margin", "settle", "rounds", "lat med", "lat max", "vis p95", "lost", "late", "empty", "one hash"),
        )
    )
    print(f"results: {out}")
    return 0 if runs and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
