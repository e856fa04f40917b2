"""Catch-up time for a late joiner at round 50, 500 and 5,000, and SmolLM2-135M checkpoint transfer.

History. For each length R this script generates a run's history the way a swarm would have
made it: 2 peers x 4 contributions per round of normally distributed projected gradients, one
byte each, decided and applied with onebyte's own code (decide_round, Replica.apply), on
tiny-llama's transformer layers (82 k weights: the history of 5,000 rounds builds in seconds, and
the checkpoint-or-log trade-off is the same as for a big model, only scaled). It writes what a long-lived peer \
would have on disk after R rounds: its seed log
(rounds 0..R-1) and its two newest checkpoints (at hash rounds), publishes the run manifest and
that peer's signed hash records in a real DHT, and starts that peer as a real `onebyte peer`
process with `--checkpoint-dir` and the same identity, with the wall clock at round R. It resumes
(own checkpoint + own log tail) and keeps the run going. Then a fresh `onebyte peer` joins with no
state at all, and we record:
  * catch-up seconds: the peer's own "catchup" round-log event (plan, transfer, verification, replay),
  * join-to-caught-up seconds: from launching the process (model load and DHT join included),
  * the method the cost estimate picked, and whether the joiner's hash equals the server's at the
    end (both apply 8 more live rounds and report their final SHA-256).
For the longest history a second joiner is forced to replay the log (--catch-up log), to show what
the checkpoint saves. Goal (issue 4): the R = 5,000 case within 2x of the R = 50 case.

Checkpoint transfer. A second process serves a SmolLM2-135M checkpoint (all 134.5 M weights, fp32)
through onebyte.p2p.transfer (hivemind's p2p, two p2pd daemons over loopback TCP); this process
downloads it, verifies its SHA-256 and installs it into a freshly loaded model. Median of 3.

    python bench/catchup.py                     # R = 50, 500, 5000 + SmolLM transfer (~6 min)
    python bench/catchup.py --rounds 50,500 --no-smollm --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import log, machine_info, write_results  # noqa: E402

TINY = dict(
    model="tiny-llama",
    model_kind="causal-lm",
    dtype="float32",
    trainable=r"layers\.",
    init_seed=0,
    dataset="drugreview",
    task=None,
    text_column="text",
    label_column="label",
    label_words=None,
    template=None,
    max_length=32,
    lr=1e-4,
    eps=1e-3,
    weight_decay=0.0,
    codec="log8:-8:8",
    table_log2=20,
)
ROUND_SECONDS = 2.0
HASH_EVERY = 5
HIST_PEERS, K = 2, 4
LIVE_ROUNDS = 8


def env() -> dict:
    return os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def build_history(R: int, srv_dir: Path, run_id: str):
    """Apply R generated rounds; write the seed log and the two newest hash-round checkpoints."""
    import numpy as np

    from onebyte.coordinator_free.agreement import decide_round
    from onebyte.coordinator_free.seedlog import SeedLog
    from onebyte.dht.identity import Identity
    from onebyte.dht.records import ContributionRecord
    from onebyte.peer.checkpoint import save_checkpoint
    from onebyte.peer.train import TrainConfig, build

    loaded, task, replica = build(TrainConfig(**TINY, progress=False))
    initial = replica.sha256()
    writers = [Identity().peer_id for _ in range(HIST_PEERS)]
    rng = np.random.default_rng(R)
    ck_dir = srv_dir / run_id
    seedlog = SeedLog(ck_dir / "seedlog.jsonl")
    hashes, contributions = {}, 0
    last_hash_rounds = [q for q in range(R) if q % HASH_EVERY == 0][-2:]
    t0 = time.time()
    for r in range(R):
        recs = {
            p: ContributionRecord(
                round=r, published_at=0.0, codes=bytes(replica.encode(float(g)) for g in rng.standard_normal(K))
            )
            for p in writers
        }
        rs = decide_round(run_id, r, recs, close_time=float("inf"), contribs_per_round=K, codec=replica.codec)
        replica.apply(rs.contributions)
        contributions += len(rs.contributions)
        seedlog.put(r, rs.digest, rs.records)
        if r in last_hash_rounds:
            hashes[r] = replica.sha256()
            save_checkpoint(
                ck_dir / f"ckpt-{r:09d}.safetensors", replica.params, r, {"run_id": run_id, "initial_sha256": initial}
            )
    return dict(
        initial_sha256=initial,
        hashes=hashes,
        contributions=contributions,
        build_seconds=time.time() - t0,
        task_description=task.describe(),
        num_trainable=replica.num_trainable,
    )


def publish(run_id: str, R: int, hist: dict, ident_path: Path, maddrs: list[str]) -> float:
    """The run's manifest (wall clock at round R now) and the server's hash records, signed by it."""
    from onebyte.coordinator_free.manifest import RunManifest
    from onebyte.dht.client import RecordClient, start_dht
    from onebyte.dht.identity import Identity
    from onebyte.dht.records import HashRecord

    ident = Identity.load_or_create(str(ident_path))
    dht = start_dht(ident, maddrs)
    client = RecordClient(dht, ident)
    now = time.time()
    start = now - R * ROUND_SECONDS + 6.0  # round R opens 6 s from now: time for the server to start
    m = RunManifest(
        run_id=run_id,
        created_at=start - 10,
        start_time=start,
        round_seconds=ROUND_SECONDS,
        publish_margin=0.5,
        settle_seconds=3.0,
        hash_every=HASH_EVERY,
        initial_sha256=hist["initial_sha256"],
        task_description=hist["task_description"],
        contribs_per_round=K,
        **TINY,
    )
    assert client.publish_manifest(run_id, m.model_dump(), now + 3600)
    for q, sha in hist["hashes"].items():
        assert client.publish_hash(
            run_id, HashRecord(round=q, sha256=sha, set_digest="0" * 64, contributions=HIST_PEERS * K), now + 3600
        )
    dht.shutdown()
    return start


def peer_cmd(name: str, wd: Path, run_id: str, maddrs: list[str], *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "onebyte.cli",
        "peer",
        "--run-id",
        run_id,
        "--no-progress",
        "--threads",
        "1",
        "--batch-size",
        "2",
        "--report",
        str(wd / f"{name}.json"),
        "--round-log",
        str(wd / f"{name}.rounds.jsonl"),
        "--checkpoint-interval",
        "0",
    ]
    for a in maddrs:
        cmd += ["--initial-peers", a]
    return [*cmd, *extra]


def events(path: Path, kind: str) -> list[dict]:
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == kind]


def wait_for(pred, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a process exited early ({p.returncode})")
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def one_length(R: int, workdir: Path, force_log_too: bool) -> dict:
    from onebyte.peer.demo import start_bootstrap

    wd = workdir / f"r{R}"
    wd.mkdir(parents=True)
    run_id = f"catchup-{R}"
    log(f"R={R}: generating the history")
    hist = build_history(R, wd / "srv", run_id)
    log(f"R={R}: {hist['contributions']} contributions applied in {hist['build_seconds']:.1f}s; starting the swarm")
    boot, maddrs = start_bootstrap(wd)
    procs = []
    try:
        start = publish(run_id, R, hist, wd / "srv.pem", maddrs)

        def ends_on_hash_round(
            r: int,
        ) -> int:  # --rounds value whose last round is a hash round (so the server's hash is on record)
            return -(-r // HASH_EVERY) * HASH_EVERY + 1

        ends = {"auto": ends_on_hash_round(R + LIVE_ROUNDS), "log": ends_on_hash_round(R + LIVE_ROUNDS + 60)}
        srv = subprocess.Popen(
            peer_cmd(
                "server",
                wd,
                run_id,
                maddrs,
                "--identity",
                str(wd / "srv.pem"),
                "--checkpoint-dir",
                str(wd / "srv"),
                "--rounds",
                str(max(ends.values()) + 3),
            ),
            stdout=open(wd / "server.log", "w"),
            stderr=subprocess.STDOUT,
            env=env(),
            cwd=ROOT,
        )
        procs.append(srv)
        wait_for(lambda: events(wd / "server.rounds.jsonl", "applied"), 120, "the server to apply a live round", procs)
        out = {
            "rounds": R,
            "history_contributions": hist["contributions"],
            "history_build_seconds": hist["build_seconds"],
            "num_trainable": hist["num_trainable"],
            "joiners": {},
        }
        modes = ["auto", "log"] if force_log_too else ["auto"]
        for mode in modes:
            name = f"join-{mode}"
            t_launch = time.time()
            p = subprocess.Popen(
                peer_cmd(name, wd, run_id, maddrs, "--catch-up", mode, "--rounds", str(ends[mode])),
                stdout=open(wd / f"{name}.log", "w"),
                stderr=subprocess.STDOUT,
                env=env(),
                cwd=ROOT,
            )
            procs.append(p)
            ev = wait_for(lambda: events(wd / f"{name}.rounds.jsonl", "catchup"), 600, f"{name} to catch up", [p])[0]
            out["joiners"][mode] = {
                "method": ev["method"],
                "catchup_seconds": ev["seconds"],
                "join_to_caught_up_seconds": ev["time"] - t_launch,
                "from_round": ev["from_round"],
                "to_round": ev["round"],
                "rounds_replayed_or_skipped": ev["round"] - ev["from_round"],
            }
            log(
                f"R={R} {mode}: {ev['method']}, catch-up {ev['seconds']:.2f}s, launch-to-caught-up "
                f"{ev['time'] - t_launch:.1f}s (to round {ev['round']})"
            )
        for p in procs:
            p.wait(timeout=max(0.0, start + (max(ends.values()) + 10) * ROUND_SECONDS - time.time()) + 120)
        reports = {n: json.loads((wd / f"{n}.json").read_text()) for n in ["server", *[f"join-{m}" for m in modes]]}
        final = {n: r["final_sha256"] for n, r in reports.items()}
        # the server runs longer (it serves the joiners): compare at each joiner's last round, a hash round
        srv_hashes = reports["server"]["hashes"]
        for mode in modes:
            r = reports[f"join-{mode}"]
            last = str(r["last_round"])
            out["joiners"][mode]["identical_hash"] = srv_hashes.get(last) == r["final_sha256"]
            out["joiners"][mode]["hash_mismatches"] = r["hash_mismatches"]
        out["final_sha256"] = final
        return out
    finally:
        for p in [*procs, boot]:
            if p.poll() is None:
                p.terminate()
        for p in [*procs, boot]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


# -- SmolLM2-135M checkpoint over p2p -------------------------------------------------------------
def serve_checkpoint(path: str, info_out: str) -> None:
    """Child process: a DHT node serving one checkpoint through onebyte.p2p.transfer."""
    from safetensors import safe_open

    from onebyte.dht.client import start_dht
    from onebyte.dht.identity import Identity
    from onebyte.p2p.transfer import ServedState, Transfer

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    dht = start_dht(Identity())
    t = Transfer(dht, "smollm-transfer")
    t.serve(
        ServedState(
            lambda: None, lambda a, b: [], lambda a, b: 0, lambda: (Path(path), int(meta["round"]), meta["sha256"])
        )
    )
    Path(info_out).write_text(json.dumps({"maddrs": [str(m) for m in dht.get_visible_maddrs()], "p2p_id": t.p2p_id}))
    while True:
        time.sleep(1)


def smollm_transfer(workdir: Path, reps: int) -> dict:
    import torch

    from onebyte.dht.client import start_dht
    from onebyte.dht.identity import Identity
    from onebyte.p2p.transfer import Transfer
    from onebyte.peer.checkpoint import install_state, save_checkpoint
    from onebyte.peer.train import TrainConfig, build

    torch.set_num_threads(2)
    _, _, replica = build(TrainConfig(progress=False))
    path = workdir / "smollm.safetensors"
    t0 = time.time()
    ck = save_checkpoint(path, replica.params, 1234, {"run_id": "smollm-transfer"})
    save_s = time.time() - t0
    size = path.stat().st_size
    info_path = workdir / "server.json"
    srv = subprocess.Popen(
        [sys.executable, __file__, "--_serve", str(path), str(info_path)],
        env=env(),
        cwd=ROOT,
        stdout=open(workdir / "smollm-server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        info = wait_for(
            lambda: info_path.exists() and json.loads(info_path.read_text()), 120, "the checkpoint server", [srv]
        )
        dht = start_dht(Identity(), info["maddrs"])
        client = Transfer(dht, "smollm-transfer", timeout=600)
        runs = []
        for _rep in range(reps):
            with torch.no_grad():
                for _, p in replica.params:
                    p.zero_()  # the receiver starts from other weights
            t0 = time.time()
            meta, tensors = client.fetch_state(info["p2p_id"], timeout=600)
            t1 = time.time()
            digest = install_state(tensors, replica.params, meta["sha256"], "bench")
            t2 = time.time()
            assert digest == ck.sha256 and replica.sha256() == ck.sha256
            runs.append({"download_seconds": t1 - t0, "verify_install_seconds": t2 - t1, "total_seconds": t2 - t0})
            log(f"SmolLM2-135M checkpoint {size / 1e6:.0f} MB: download {t1 - t0:.2f}s, verify+install {t2 - t1:.2f}s")
            del tensors
        client.close()
        dht.shutdown()
    finally:
        srv.kill()
        srv.wait()
    med = lambda k: sorted(r[k] for r in runs)[len(runs) // 2]  # noqa: E731
    return {
        "bytes": size,
        "save_seconds": save_s,
        "runs": runs,
        "download_seconds_median": med("download_seconds"),
        "verify_install_seconds_median": med("verify_install_seconds"),
        "total_seconds_median": med("total_seconds"),
        "download_MB_per_s": size / 1e6 / med("download_seconds"),
        "identical_hash": True,
    }


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--_serve":
        serve_checkpoint(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", default="50,500,5000", help="history lengths (default: %(default)s)")
    ap.add_argument("--no-smollm", action="store_true", help="skip the SmolLM2-135M transfer")
    ap.add_argument("--quick", action="store_true", help="one transfer repetition, no forced log replay")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench/results/catchup.json"))
    args = ap.parse_args()
    lengths = [int(x) for x in args.rounds.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="onebyte-catchup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "catchup",
        "machine": machine_info(1),
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "settings": {
            "round_seconds": ROUND_SECONDS,
            "hash_every": HASH_EVERY,
            "history_peers": HIST_PEERS,
            "contribs_per_peer": K,
            "model": "tiny-llama, trainable layers\\. (82 k weights)",
            "live_rounds_after": LIVE_ROUNDS,
        },
        "lengths": [],
    }
    for R in lengths:
        results["lengths"].append(one_length(R, workdir, force_log_too=(R == max(lengths) and not args.quick)))
    by = {x["rounds"]: x["joiners"]["auto"]["catchup_seconds"] for x in results["lengths"]}
    lo, hi = min(by), max(by)
    results["goal"] = {"text": f"R={hi} within 2x of R={lo}", "ratio": by[hi] / by[lo], "met": by[hi] <= 2 * by[lo]}
    if not args.no_smollm:
        results["smollm2_135m_transfer"] = smollm_transfer(workdir, 1 if args.quick else 3)
    write_results("catchup", results, args.out)
    print()
    print(f"{'R':>5}  {'method':>10}  {'catch-up s':>10}  {'launch->caught up s':>19}  identical")
    for x in results["lengths"]:
        for mode, j in x["joiners"].items():
            print(
                f"{x['rounds']:>5}  {j['method'] + ('' if mode == 'auto' else ' (forced)'):>10}  "
                f"{j['catchup_seconds']:>10.2f}  "
                f"{j['join_to_caught_up_seconds']:>19.1f}  {j['identical_hash']}"
            )
    print(
        f"goal: {results['goal']['text']}: ratio {results['goal']['ratio']:.2f} -> "
        f"{'met' if results['goal']['met'] else 'missed'}"
    )
    if "smollm2_135m_transfer" in results:
        s = results["smollm2_135m_transfer"]
        print(
            f"SmolLM2-135M checkpoint {s['bytes'] / 1e6:.0f} MB over p2p on loopback: download "
            f"{s['download_seconds_median']:.2f}s "
            f"({s['download_MB_per_s']:.0f} MB/s), verify+install {s['verify_install_seconds_median']:.2f}s"
        )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
