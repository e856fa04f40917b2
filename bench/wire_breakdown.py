"""The parts of bench/wire_bytes.py that do not run a whole swarm: the per-operation breakdown
(one worker process, in its own namespace, does each DHT operation of a round one kind at a time)
and hivemind's first-order all-reduce bytes, computed from its wire format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, log
from harness.netns import Namespace

HIVEMIND_DEFAULT_REPLICAS = 5
SMOLLM2_135M_PARAMS = 134_515_008  # 49152*576 (tied embeddings) + 30 * 3,540,096 (layers) + 576 (final norm)
HEADER_BYTES_PER_PACKET = 66  # on lo: Ethernet 14 + IPv4 20 + TCP 20 + timestamps option 12
WIRE_BYTES = Path(__file__).resolve().with_name("wire_bytes.py")  # runs the worker: --_breakdown-worker


def peer_env() -> dict:
    return os.environ | {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


# -- hivemind first-order averaging: computed ------------------------------------------------------
def hivemind_computed(ns: list[int], params: int = SMOLLM2_135M_PARAMS) -> dict:
    """Bytes per optimizer step of hivemind's butterfly all-reduce (hivemind/averaging/allreduce.py).

    Each of N peers owns 1/N of the flattened vector (TensorPartContainer, split into parts of
    DEFAULT_PART_SIZE_BYTES = 2**19 bytes after compression). Peer i sends each other peer j its copy of
    j's 1/N (rpc_aggregate_part stream of AveragingData), and j streams back the averaged delta of the
    same size. So each peer sends (N-1)/N * P values as inputs and (N-1)/N * P values as averaged
    outputs, and receives the same: 2 (N-1)/N * P * bytes_per_value each way; over the whole swarm
    N * 2 (N-1)/N * P * b = 2 (N-1) P b bytes cross the network per step.
    Framing (computed, upper bounds): per 512 KiB part one AveragingData protobuf (tensor_part: buffer
    tag+len 4, size 4, dtype 'float32' 9, compression 2, chunks 2; weight 9; code/group_id on the
    first part ~40) ~ 40 bytes + a varint length prefix = < 0.01 %; yamux 12-byte header per frame of
    <= 64 KiB (0.02 %); TLS 1.3 records (p2pd -tls=1) 22 bytes per 16 KiB record (0.13 %); TCP/IP/Ethernet
    headers 66 bytes per 1448-byte segment on a 1500-MTU link (4.6 %) plus the reverse ACKs (about one
    66-byte ACK per two segments: 2.3 % of the data, on the receiving side's tx). Matchmaking (DHT
    declare + join/leader RPCs) is a few KB per step, negligible here.
    """
    part = 2**19
    out = {
        "method": "computed from hivemind 1.1.12's all-reduce wire format, NOT measured",
        "params": params,
        "model": "SmolLM2-135M",
        "part_size_bytes": part,
        "per_n": [],
    }
    frame = 40 / part + 12 / 65536 + 22 / 16384
    tcp = HEADER_BYTES_PER_PACKET / 1448 + 0.5 * HEADER_BYTES_PER_PACKET / 1448
    for n in ns:
        row = {"n": n}
        for name, bpv in (("fp16", 2), ("fp32", 4)):
            payload_per_peer_sent = 2 * (n - 1) / n * params * bpv
            swarm = n * payload_per_peer_sent
            row[name] = {
                "payload_bytes_sent_per_peer_per_step": payload_per_peer_sent,
                "payload_bytes_per_step_swarm": swarm,
                "wire_bytes_per_step_swarm": swarm * (1 + frame + tcp),
                "wire_bytes_per_peer_per_step": swarm * (1 + frame + tcp) / n,
                # one step averages N gradients (one per peer): the nearest thing to a 'contribution'
                "wire_bytes_per_gradient": swarm * (1 + frame + tcp) / n,
            }
        out["per_n"].append(row)
    out["overhead_factor"] = {"framing": frame, "tcp_ip_1500mtu_incl_acks": tcp}
    out["notes"] = (
        "fp16 = Float16Compression as hivemind's examples configure it (the 2 bytes/parameter of anchors.md); "
        "fp32 = hivemind.Optimizer's default grad_compression=NoCompression(). hivemind.Optimizer also averages "
        "parameters/optimizer state periodically (average_state_every), not counted here."
    )
    return out


# -- per-operation breakdown (runs inside its own namespace) -----------------------------------------
# One process starts a bootstrap DHT and N peer DHTs (onebyte's start_dht/RecordClient, Ed25519-signed
# records, the same record schemas and sizes as a real peer) and performs each operation a peer does
# per round, one kind at a time, N peers in turn, reading the lo counters around each batch and
# subtracting the background rate measured on the same swarm at rest. It also measures two leaner
# ways to move the same records over the same DHT (see _lean_store/_lean_read).
async def _lean_store(key, subkey, value, expiration, k_rep, dht, node):
    """onebyte.dht.lean.lean_store: one signed subkey to the k_rep nearest known nodes, no crawl."""
    from onebyte.dht.lean import lean_store

    return await lean_store(key, subkey, value, expiration, k_rep, dht, node)


async def _lean_read(key, k_rep, dht, node):
    """onebyte.dht.lean.lean_read from the k_rep nearest known nodes; returns how many subkeys it merged."""
    from onebyte.dht.lean import lean_read

    return len((await lean_read(key, k_rep, dht, node))[0])


def breakdown_worker(n: int, k: int, replicas: int | None, out: str, lean_reps: list[int]) -> None:
    from functools import partial

    from onebyte import PROTOCOL_VERSION, __version__
    from onebyte.dht import records as Rec
    from onebyte.dht.client import RecordClient, start_dht
    from onebyte.dht.identity import Identity

    def ctr() -> tuple[int, int]:
        with open("/sys/class/net/lo/statistics/tx_bytes") as fb, open("/sys/class/net/lo/statistics/tx_packets") as fp:
            return int(fb.read()), int(fp.read())

    boot = start_dht(Identity(), [])
    maddrs = [str(a) for a in boot.get_visible_maddrs(latest=True)]
    idents = [Identity() for _ in range(n)]
    clients = []
    for ident in idents:
        clients.append(RecordClient(start_dht(ident, maddrs, num_replicas=replicas), ident))
    run = "breakdown"
    # let every node meet every other, as in a swarm that has run for a while
    for c in clients:
        c.publish_heartbeat(run, Rec.Heartbeat(version=__version__, round=-1, sha256="", made=0, rate=0.0), 60)
    time.sleep(3.0)
    b0, t0 = ctr(), time.time()
    time.sleep(8.0)
    b1, t1 = ctr(), time.time()
    bg = ((b1[0] - b0[0]) / (t1 - t0), (b1[1] - b0[1]) / (t1 - t0))
    results: dict = {
        "n": n,
        "k": k,
        "replicas": replicas or HIVEMIND_DEFAULT_REPLICAS,
        "background_bytes_per_second": bg[0],
        "background_packets_per_second": bg[1],
        "ops": {},
    }

    def batch(name: str, fns: list) -> None:
        time.sleep(0.3)
        c0, t0 = ctr(), time.time()
        outs = [fn() for fn in fns]
        time.sleep(0.7)  # trailing ACKs and follow-up work the operation triggered (e.g. a cache refresh)
        c1, t1 = ctr(), time.time()
        by, pk = (c1[0] - c0[0]) - bg[0] * (t1 - t0), (c1[1] - c0[1]) - bg[1] * (t1 - t0)
        results["ops"].setdefault(name, []).append(
            {"bytes_per_op": by / len(fns), "packets_per_op": pk / len(fns), "results": outs}
        )

    sha = "ab" * 32
    for r in (10, 11):  # two rounds; the second is the steady state (routing tables and connections warm)
        hb = Rec.Heartbeat(version=__version__, round=r - 1, sha256=sha, made=123 * r, rate=1.2345)
        ann = Rec.RunAnnouncement(
            run_id=run, model="tiny-llama", task="drugreview", round=r - 1, protocol_version=PROTOCOL_VERSION
        )
        batch("heartbeat_store", [partial(c.publish_heartbeat, run, hb, 34.0) for c in clients])
        batch("announce_store", [partial(c.announce_run, ann, 34.0) for c in clients])
        exp = time.time() + 3600
        batch(
            "contribution_store",
            [
                partial(
                    c.publish_contributions,
                    run,
                    Rec.ContributionRecord(round=r, published_at=time.time(), codes=os.urandom(k)),
                    exp,
                )
                for c in clients
            ],
        )
        batch("round_read", [lambda c=c: len(c.read_round(run, r)) for c in clients])
        hr = Rec.HashRecord(round=r, sha256=sha, set_digest="cd" * 32, contributions=n * k)
        batch("hash_store", [partial(c.publish_hash, run, hr, exp) for c in clients])
        batch("hash_read", [lambda c=c: len(c.read_hashes(run, r)) for c in clients])
    for rep, r in [(rep, base + rep) for base in (100, 200) for rep in lean_reps]:  # twice; the second pass is reported
        key = Rec.round_key(run, r)
        exp = time.time() + 3600
        batch(
            f"lean_store_r{rep}",
            [
                lambda c=c: c.dht.run_coroutine(
                    partial(
                        _lean_store,
                        key,
                        c.subkey,
                        Rec.ContributionRecord(round=r, published_at=time.time(), codes=os.urandom(k)).pack(),
                        exp,
                        rep,
                    )
                )
                for c in clients
            ],
        )
        batch(f"lean_read_r{rep}", [lambda c=c: c.dht.run_coroutine(partial(_lean_read, key, rep)) for c in clients])
    # the record itself, as stored: msgpack value + Ed25519 signature, msgpack subkey
    from hivemind.utils import MSGPackSerializer as M

    rec = Rec.ContributionRecord(round=11, published_at=time.time(), codes=os.urandom(k)).pack()
    results["record_bytes"] = {
        "codes": k,
        "value_msgpack": len(M.dumps(rec)),
        "signature": 64,
        "subkey_msgpack": len(M.dumps(clients[0].subkey)),
        "heartbeat_msgpack": len(M.dumps(hb.model_dump())),
        "hash_msgpack": len(M.dumps(hr.model_dump())),
        "announce_msgpack": len(M.dumps(ann.model_dump())),
    }
    # steady state = the second round's batches
    results["per_op"] = {name: v[-1]["bytes_per_op"] for name, v in results["ops"].items()}
    results["per_op_packets"] = {name: v[-1]["packets_per_op"] for name, v in results["ops"].items()}
    results["reads_complete"] = {
        name: [x["results"] for x in v] for name, v in results["ops"].items() if "read" in name
    }
    Path(out).write_text(json.dumps(results, indent=2, default=str))
    for c in clients:
        c.dht.shutdown()
    boot.shutdown()


def run_breakdown(
    idx: int, n: int, k: int, replicas: int | None, round_seconds: float, workdir: Path, lean_reps: list[int]
) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    ns = Namespace(f"onebyte-bench-{os.getpid()}-b{idx}")
    out = workdir / f"breakdown-n{n}.json"
    log(f"breakdown N={n} K={k}: per-operation bytes in namespace {ns.name}")
    with ns:
        p = ns.popen(
            [sys.executable, str(WIRE_BYTES), "--_breakdown-worker", json.dumps([n, k, replicas, str(out), lean_reps])],
            stdout=open(workdir / f"breakdown-n{n}.log", "w"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=peer_env(),
        )
        try:
            p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            raise TimeoutError("breakdown worker did not finish in 300 s") from None
        if p.returncode != 0 or not out.exists():
            tail = (workdir / f"breakdown-n{n}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"breakdown worker failed ({p.returncode}): " + " | ".join(tail))
    res = json.loads(out.read_text())
    op = res["per_op"]
    # what one round costs, op by op, as the peer loop does it (swarm.py): per peer and round one heartbeat
    # (2 stores: peers key + runs key), one contribution store, one round read, one hash store, one hash read
    # (hash_every = 1 for rounds >= 5 s), plus the background of the swarm at rest
    per_round = {
        name: n * op[name]
        for name in ("heartbeat_store", "announce_store", "contribution_store", "round_read", "hash_store", "hash_read")
    }
    per_round["background"] = res["background_bytes_per_second"] * round_seconds
    total = sum(per_round.values())
    res["model_per_round"] = per_round
    res["model_bytes_per_round"] = total
    res["model_bytes_per_contribution"] = total / (n * k)
    res["model_share"] = {name: v / total for name, v in per_round.items()}
    res["lean"] = {}
    for rep in lean_reps:
        if f"lean_store_r{rep}" in op:
            lean = n * (op[f"lean_store_r{rep}"] + op[f"lean_read_r{rep}"])
            res["lean"][f"r{rep}"] = {
                "bytes_per_round": lean,
                "bytes_per_contribution": lean / (n * k),
                "store_per_op": op[f"lean_store_r{rep}"],
                "read_per_op": op[f"lean_read_r{rep}"],
                "reads_complete": all(x == n for v in res["reads_complete"][f"lean_read_r{rep}"] for x in v),
            }
    return res
