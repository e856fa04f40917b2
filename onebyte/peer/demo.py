"""``onebyte demo``: a real local swarm on loopback: one bootstrap node and N peer processes.

Each peer is a separate ``onebyte peer`` process on its own data shard; the first creates the
run. Progress comes from the peers' round logs; the summary from their JSON reports.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from onebyte.cli.config import child_environment
from onebyte.peer.train import write_json_atomic

log = logging.getLogger("onebyte.demo")


@dataclass
class DemoConfig:
    peers: int = 4
    rounds: int = 30
    run_id: str | None = None
    workdir: str | None = None
    report: str | None = None
    peer_args: list[str] = field(default_factory=list)  # agreed settings and options passed to every peer
    first_peer_args: list[str] = field(default_factory=list)
    eval_size: int | None = None
    timeout: float = 3600.0
    progress: bool = True
    metrics_port: int | None = None  # peer i serves Prometheus metrics on metrics_port + i
    metrics_host: str = "127.0.0.1"


def _cli() -> list[str]:
    return [sys.executable, "-m", "onebyte.cli"]


def start_bootstrap(workdir: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, list[str]]:
    """Start ``onebyte bootstrap`` and return it with the multiaddrs it printed."""
    out = open(workdir / "bootstrap.log", "w")
    proc = subprocess.Popen(
        [*_cli(), "bootstrap", *extra], stdout=subprocess.PIPE, stderr=out, text=True, env=child_environment()
    )
    maddrs: list[str] = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"bootstrap node exited (code {proc.returncode}); see {workdir / 'bootstrap.log'}")
            continue
        m = re.match(r"^(/ip4/\S+/p2p/\S+)$", line.strip())
        if m:
            maddrs.append(m.group(1))
        elif maddrs:
            break
    if not maddrs:
        proc.kill()
        raise RuntimeError("bootstrap node printed no address")
    return proc, maddrs


def run_demo(cfg: DemoConfig) -> dict:
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="onebyte-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in [*workdir.glob("peer*.json"), *workdir.glob("peer*.jsonl"), *workdir.glob("peer*.log")]:
        stale.unlink()  # a previous demo's logs would be read as this one's progress
    for stale in workdir.glob("peer*.checkpoints"):
        shutil.rmtree(stale)  # a previous demo's checkpoints (another run id): only disk space
    run_id = cfg.run_id or f"demo-{int(time.time())}"
    procs: list[subprocess.Popen] = []
    threads = max(1, (os.cpu_count() or 1) // cfg.peers)  # peers share this machine's cores
    boot, maddrs = start_bootstrap(workdir)
    log.info("bootstrap node at %s; logs in %s", maddrs[0], workdir)
    if threading.current_thread() is threading.main_thread():  # a SIGTERM stops the peers too (the finally below)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for i in range(cfg.peers):
            args = [
                *_cli(),
                "peer",
                "--run-id",
                run_id,
                "--shard",
                f"{i}/{cfg.peers}",
                "--rounds",
                str(cfg.rounds),
                "--threads",
                str(threads),
                "--report",
                str(workdir / f"peer{i}.json"),
                "--round-log",
                str(workdir / f"peer{i}.rounds.jsonl"),
                "--no-progress",
            ]
            # two peers keep checkpoints and their seed log for late joiners (each checkpoint is a full copy of the
            # weights)
            if i < 2:
                args += ["--checkpoint-dir", str(workdir / f"peer{i}.checkpoints")]
            for a in maddrs:
                args += ["--initial-peers", a]
            if cfg.metrics_port is not None:
                args += ["--metrics-port", str(cfg.metrics_port + i), "--metrics-host", cfg.metrics_host]
            if i == 0:
                args += ["--new-run", "--evaluate", *cfg.peer_args, *cfg.first_peer_args]
                if cfg.eval_size:
                    args += ["--eval-size", str(cfg.eval_size)]
            else:  # the creator evaluates before it publishes the run: on a loaded machine that can take minutes
                args += ["--join-timeout", "900", *_peer_local_args(cfg.peer_args)]
            log_f = open(workdir / f"peer{i}.log", "w")
            procs.append(
                subprocess.Popen(
                    args, stdout=log_f, stderr=subprocess.STDOUT, env=child_environment() | {"PYTHONUNBUFFERED": "1"}
                )
            )
            if i == 0:
                time.sleep(1.0)
        _follow(procs, workdir, cfg)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        boot.terminate()
        try:
            boot.wait(timeout=10)
        except subprocess.TimeoutExpired:
            boot.kill()
    return _summarize(workdir, cfg, run_id, [p.returncode for p in procs])


def _peer_local_args(args: list[str]) -> list[str]:
    """Options every peer takes (device, batch size); agreed settings come from the manifest."""
    keep = {"--device", "--batch-size", "--num-replicas", "--max-examples"}
    out, i = [], 0
    while i < len(args):
        if args[i] in keep and i + 1 < len(args):
            out += args[i : i + 2]
            i += 2
        else:
            i += 1
    return out


def _follow(procs, workdir: Path, cfg: DemoConfig) -> None:
    bar = tqdm(
        total=cfg.rounds * cfg.peers,
        desc=f"demo: {cfg.peers} peers x {cfg.rounds} rounds",
        unit="round",
        disable=not cfg.progress,
    )
    deadline = time.time() + cfg.timeout
    done = 0
    while any(p.poll() is None for p in procs):
        if time.time() > deadline:
            raise TimeoutError(f"demo did not finish within {cfg.timeout:.0f}s")
        applied = 0
        for i in range(len(procs)):
            f = workdir / f"peer{i}.rounds.jsonl"
            if f.exists():
                applied += sum(1 for line in f.read_text().splitlines() if '"applied"' in line)
        bar.update(applied - done)
        done = applied
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed:
            tail = (workdir / f"peer{failed[0]}.log").read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"peer {failed[0]} failed (exit {procs[failed[0]].returncode}): " + " | ".join(tail))
        time.sleep(1.0)
    bar.update(cfg.rounds * cfg.peers - done)
    bar.close()


def _summarize(workdir: Path, cfg: DemoConfig, run_id: str, codes: list) -> dict:
    peers = []
    for i in range(cfg.peers):
        f = workdir / f"peer{i}.json"
        if not f.exists():
            raise RuntimeError(f"peer {i} wrote no report (exit code {codes[i]}); see {workdir / f'peer{i}.log'}")
        r = json.loads(f.read_text())
        peers.append(
            {
                k: r[k]
                for k in (
                    "peer_id",
                    "rounds_applied",
                    "last_round",
                    "contributions_made",
                    "contributions_published",
                    "contributions_applied_local",
                    "contributions_applied_remote",
                    "missed_deadline",
                    "hash_agreements",
                    "hash_mismatches",
                    "rejected",
                    "final_sha256",
                    "seconds",
                    "contributing_seconds",
                    "contributing_fraction",
                )
            }
        )
        if i == 0:
            first = r
    hashes = {p["final_sha256"] for p in peers}
    report = {
        "run_id": run_id,
        "peers": peers,
        "rounds": cfg.rounds,
        "all_hashes_equal": len(hashes) == 1,
        "eval_before": first["eval_before"],
        "eval_after": first["eval_after"],
        "eval_curve": first.get("eval_curve", []),
        "manifest": first["manifest"],
        "contributions_total": sum(p["contributions_published"] for p in peers),
        # the share of the peers' wall time spent making contributions (the rest waits, applies, evaluates)
        "contributing_fraction": sum(p["contributing_seconds"] for p in peers)
        / max(1e-9, sum(p["seconds"] for p in peers)),
        "workdir": str(workdir),
    }
    if cfg.report:
        write_json_atomic(cfg.report, report)
    return report
