"""Load: as many tiny-model peers as this machine holds, on loopback, training one run together.

For each swarm size N (default 16) it starts a bootstrap node and N real `onebyte peer` processes
(the config-built tiny-llama, 3.2 M weights, one torch thread each), lets them run a fixed number
of rounds, and records:
  * whether rounds kept closing: every peer applied every round 0..R-1 and left on its own;
  * agreement: every peer's final weight hash, hash mismatches and repairs;
  * round latency: each peer's `--round-log` `latency_seconds` (from the round's close to the moment
    it was applied: the settle window, reading the round from the DHT, applying it), per round
    and overall, median / p90 / max;
  * CPU per peer: user+system seconds of the peer's whole process tree (its python process, its
    DHT child process and its p2p daemon) from round 0's opening to the end, divided by the wall
    time: 1.0 = one core (psutil, sampled every 2 s); peak RSS and PSS of the tree (PSS counts
    the pages the forked DHT process still shares with the peer process once: what a peer costs);
  * contributions per round and per peer.
Timing is reported, never asserted; other work on the machine shows in `machine.loadavg_*`.

    python bench/load.py                      # 16 peers, 20 rounds of 8 s
    python bench/load.py --peers 4,8,16 --rounds 15
Results: bench/results/load.json (one entry per N).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import RESULTS, log, machine_info, percentile, write_results  # noqa: E402
from onebyte.peer.demo import child_environment, start_bootstrap  # noqa: E402

TINY = ["--model", "tiny-llama", "--lr", "1e-3", "--eps", "1e-3", "--table-log2", "20", "--max-length", "32"]


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile, None for no samples (as load.json has always reported it)."""
    return percentile(xs, q, nearest=True, empty=None)


def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class TreeMeter:
    """CPU seconds and peak RSS of a process tree; children that exit keep their last reading."""

    def __init__(self, pid: int):
        self.pid = pid
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.peak_pss = 0
        self.samples = 0

    def sample(self) -> None:
        rss, pss = 0, 0
        full = self.samples % 5 == 0  # PSS (pages shared with the forked DHT process counted once) costs a smaps read
        self.samples += 1
        for p in tree(self.pid):
            try:
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system
                rss += p.memory_info().rss
                if full:
                    pss += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def seconds(self) -> float:
        return sum(self.cpu.values())


def run_swarm(n: int, args, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    run_id = f"load{n}-{int(time.time())}"
    boot, maddrs = start_bootstrap(workdir)
    procs: dict[str, subprocess.Popen] = {}
    meters: dict[str, TreeMeter] = {}
    start_delay = args.start_delay if args.start_delay is not None else 30 + 8 * n  # every peer joins before round 0
    try:
        for i in range(n):
            name = f"p{i:02d}"
            cmd = [
                sys.executable,
                "-m",
                "onebyte.cli",
                "--log-level",
                "INFO",
                "peer",
                "--no-progress",
                "--run-id",
                run_id,
                "--rounds",
                str(args.rounds),
                "--batch-size",
                "4",
                "--threads",
                "1",
                "--shard",
                f"{i}/{n}",
                "--report",
                str(workdir / f"{name}.json"),
                "--round-log",
                str(workdir / f"{name}.rounds.jsonl"),
                "--join-timeout",
                "600",
            ]
            for a in maddrs:
                cmd += ["--initial-peers", a]
            if i == 0:
                cmd += [
                    "--new-run",
                    "--start-delay",
                    str(start_delay),
                    *TINY,
                    "--round-seconds",
                    str(args.round_seconds),
                    "--contribs-per-round",
                    str(args.contribs),
                    "--hash-every",
                    str(args.hash_every),
                ]
            out = open(workdir / f"{name}.log", "w")
            procs[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=child_environment() | {"OMP_NUM_THREADS": "1"}
            )
            meters[name] = TreeMeter(procs[name].pid)
            time.sleep(args.stagger if i else 3.0)  # the creator publishes the manifest first
        log(f"N={n}: {n} peers started; round 0 opens {start_delay:.0f}s after the first")
        # wait for round 0 to open (its start is in the first peer's report... read it from the first round log instead)
        t_start = None
        base: dict[str, float] = {}
        load_start = os.getloadavg()
        deadline = time.time() + start_delay + args.rounds * args.round_seconds + 600
        while time.time() < deadline and any(p.poll() is None for p in procs.values()):
            for m in meters.values():
                m.sample()
            if t_start is None and (workdir / "p00.rounds.jsonl").exists():
                t_start = time.time()
                base = {k: m.seconds() for k, m in meters.items()}
                load_start = os.getloadavg()
            time.sleep(2.0)
        for name, p in procs.items():
            if p.poll() is None:
                log(f"N={n}: {name} still running at the deadline; stopping it")
                p.terminate()
        codes = {name: p.wait(timeout=60) for name, p in procs.items()}
        t_end = time.time()
        load_end = os.getloadavg()
    finally:
        for p in [*procs.values(), boot]:
            if p.poll() is None:
                p.kill()
                p.wait()
    return analyse(n, args, workdir, codes, meters, base, t_start, t_end, (load_start, load_end))


def analyse(n, args, workdir: Path, codes, meters, base, t_start, t_end, loads) -> dict:
    reports, latencies, per_round = {}, [], {}
    for name in codes:
        f = workdir / f"{name}.json"
        reports[name] = json.loads(f.read_text()) if f.exists() else None
        rl = workdir / f"{name}.rounds.jsonl"
        for line in rl.read_text().splitlines() if rl.exists() else []:
            e = json.loads(line)
            if e.get("event") == "applied" and e.get("latency_seconds") is not None:
                latencies.append(e["latency_seconds"])
                per_round.setdefault(
                    e["round"], {"latency": [], "contributions": e["contributions"], "peers": e["peers"]}
                )["latency"].append(e["latency_seconds"])
    ok = [r for r in reports.values() if r]
    hashes = {r["final_sha256"] for r in ok}
    wall = (t_end - t_start) if t_start else None
    cpu = {k: (m.seconds() - base.get(k, 0.0)) / wall for k, m in meters.items()} if wall else {}
    settle = ok[0]["manifest"]["settle_seconds"] if ok else None
    res = {
        "peers": n,
        "rounds": args.rounds,
        "round_seconds": args.round_seconds,
        "settle_seconds": settle,
        "contribs_per_round": args.contribs,
        "exit_codes": codes,
        "peers_finished": sum(1 for c in codes.values() if c == 0),
        "every_round_applied_by_every_peer": len(ok) == n
        and all(r["rounds_applied"] >= args.rounds and r["last_round"] == args.rounds - 1 for r in ok),
        "rounds_applied_min": min((r["rounds_applied"] for r in ok), default=0),
        "all_hashes_equal": len(ok) == n and len(hashes) == 1,
        "distinct_final_hashes": len(hashes),
        "hash_mismatches_total": sum(r["hash_mismatches"] for r in ok),
        "repairs_total": sum(r["repairs"] for r in ok),
        "contributions_total": sum(r["contributions_published"] for r in ok),
        "contributions_per_round_median": statistics.median(v["contributions"] for v in per_round.values())
        if per_round
        else None,
        "contributing_peers_per_round_median": statistics.median(v["peers"] for v in per_round.values())
        if per_round
        else None,
        "missed_deadline_total": sum(r["missed_deadline"] for r in ok),
        "latency_seconds": {
            "median": pct(latencies, 0.5),
            "p90": pct(latencies, 0.9),
            "max": max(latencies, default=None),
            "samples": len(latencies),
        },
        "latency_after_settle_seconds_median": (pct(latencies, 0.5) - settle)
        if latencies and settle is not None
        else None,
        "latency_per_round_median": {str(q): statistics.median(v["latency"]) for q, v in sorted(per_round.items())},
        "cpu_cores_per_peer": {
            "mean": statistics.mean(cpu.values()) if cpu else None,
            "max": max(cpu.values(), default=None),
            "total": sum(cpu.values()) if cpu else None,
        },
        "peak_rss_mb_per_peer": {
            "mean": statistics.mean(m.peak_rss for m in meters.values()) / 2**20,
            "max": max(m.peak_rss for m in meters.values()) / 2**20,
        },
        "peak_pss_mb_per_peer": {
            "mean": statistics.mean(m.peak_pss for m in meters.values()) / 2**20,
            "max": max(m.peak_pss for m in meters.values()) / 2**20,
        },
        "measured_seconds": wall,
        "loadavg_at_round0": loads[0],
        "loadavg_at_end": loads[1],
    }
    log(
        f"N={n}: finished {res['peers_finished']}/{n}, every round applied "
        f"{res['every_round_applied_by_every_peer']}, hashes equal "
        f"{res['all_hashes_equal']}, latency median {res['latency_seconds']['median']}, CPU/peer "
        f"{res['cpu_cores_per_peer']['mean']}"
    )
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", default="16", help="comma-separated swarm sizes (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--round-seconds", type=float, default=8.0)
    p.add_argument("--contribs", type=int, default=2, help="contributions per peer per round")
    p.add_argument("--hash-every", type=int, default=4)
    p.add_argument(
        "--start-delay",
        type=float,
        default=None,
        help="seconds from the first peer's start to round 0 (default 30 + 8 s per peer)",
    )
    p.add_argument("--stagger", type=float, default=1.0, help="seconds between peer starts")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=str(RESULTS / "load.json"))
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="onebyte-load-"))
    results = []
    for n in [int(x) for x in args.peers.split(",")]:
        results.append(run_swarm(n, args, workdir / f"n{n}"))
    out = {
        "benchmark": "load",
        "config": vars(args) | {"model": "tiny-llama", "trainable_parameters": 3227968},
        "machine": machine_info(1),
        "results": results,
    }
    write_results("load", out, args.out)
    log(f"wrote {args.out} (logs in {workdir})")
    return 0 if all(r["all_hashes_equal"] and r["every_round_applied_by_every_peer"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
