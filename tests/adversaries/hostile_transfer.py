"""Hostile catch-up sources for tests:
python -m tests.adversaries.hostile_transfer --run-id R --initial-peers M ... --out F.

Real hivemind DHT nodes and real libp2p handlers (the ones onebyte.p2p.transfer calls), each
advertised by a validly signed heartbeat of its own key, so a joiner lists it among the run's
live peers and asks it for .info, .log and .state. Each node misbehaves in one way:

  crash   .info answers every shape that once crashed a joiner, one per call: {"log":[1,0],...}
          (first > last: a division by zero), "log" as null with contributions, a string, a map,
          a list of three, "checkpoint":[1,2], not JSON, 100 KB of JSON, JSON nested 100,000 deep
  flood   .info offers a 1,000-byte checkpoint of the newest agreed hash round (the swarm's own
          hash, so the offer is admissible), then .state streams tensor parts without end
  bigmsg  .info offers a log from round 0; .log answers with one message announced as 100 MB
  stall   .info offers a log from round 0 and a small checkpoint; .log and .state never answer
  liar    .info invents 10**12 contributions over rounds 0..10**9; .log sends lines nested
          100,000 deep, lines for the wrong round, and a 2 MB line

plus ``--tarpits N`` heartbeats of fresh keys whose p2p addresses are a TCP port that accepts
connections and never says a word (``--tarpit-port``). What each node sent is written to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
import time

from hivemind.p2p import P2P, PeerID
from hivemind.proto import averaging_pb2, runtime_pb2

from onebyte import __version__
from onebyte.coordinator_free.manifest import RunManifest, pick_manifest
from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import Heartbeat, peers_key
from onebyte.p2p.transfer import Transfer, handler_prefix
from tests.adversaries.hostile_client import SER, store_raw, subkey_of

CRASH_SHAPES = [
    b'{"log":[1,0],"contributions":1,"checkpoint":null}',
    b'{"log":null,"contributions":5,"checkpoint":null}',
    b'{"log":"0-9","contributions":1,"checkpoint":null}',
    b'{"log":{"first":0,"last":9},"contributions":1,"checkpoint":null}',
    b'{"log":[0,1,2],"contributions":1,"checkpoint":null}',
    b'{"log":[0,9],"contributions":1,"checkpoint":[1,2]}',
    b'{"log":[0,9],"contributions":-3,"checkpoint":{"round":"x","sha256":7,"bytes":-1}}',
    b"\xc1not json",
    b'{"log":[0,9],"pad":"' + b"x" * 100_000 + b'","contributions":1,"checkpoint":null}',
    b"[" * 100_000,
]


def random_peer_id() -> str:
    return PeerID(b"\x00\x24\x08\x01\x12\x20" + os.urandom(32)).to_base58()


class Node:
    def __init__(self, mode: str, run_id: str, maddrs: list[str], stats: dict, lock: threading.Lock):
        self.mode, self.run_id, self.stats, self.lock = mode, run_id, stats, lock
        self.identity = Identity()
        self.dht = start_dht(self.identity, maddrs)
        self.client = RecordClient(self.dht, self.identity)
        self.t = Transfer(self.dht, run_id)
        self.prefix = handler_prefix(run_id)
        self.offer: dict | None = None
        stats[mode] = {
            "peer_id": self.identity.peer_id,
            "info_calls": 0,
            "log_calls": 0,
            "state_calls": 0,
            "bytes_sent": 0,
        }

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[self.mode][key] += n

    def beat(self) -> None:
        hb = Heartbeat(
            version=__version__, round=10**6, sha256="", made=1, rate=1.0, p2p_id=self.t.p2p_id, p2p_addrs=self.t.addrs
        )
        self.client.publish_heartbeat(self.run_id, hb, 600.0)

    def register(self) -> None:
        mode = self.mode

        async def info(_req, _ctx):
            self.count("info_calls")
            if mode == "crash":
                i = self.stats[mode]["info_calls"] - 1
                return averaging_pb2.DownloadData(metadata=CRASH_SHAPES[i % len(CRASH_SHAPES)])
            if mode == "flood":
                meta = {"log": None, "contributions": 0, "checkpoint": self.offer}
            elif mode == "liar":
                meta = {"log": [0, 10**9], "contributions": 10**12, "checkpoint": None}
            elif mode == "stall":
                meta = {
                    "log": [0, 10**6],
                    "contributions": 10,
                    "checkpoint": {"round": 0, "sha256": "0" * 64, "bytes": 1000},
                }
            else:  # bigmsg
                meta = {"log": [0, 10**6], "contributions": 10, "checkpoint": None}
            return averaging_pb2.DownloadData(metadata=json.dumps(meta).encode())

        async def log_handler(_req, _ctx):
            self.count("log_calls")
            if mode == "stall":
                await asyncio.sleep(3600)
            if mode == "liar":
                yield averaging_pb2.DownloadData(metadata=b"[" * 100_000 + b"\n")
                yield averaging_pb2.DownloadData(
                    metadata=b'{"round":999999,"digest":"' + b"0" * 64 + b'","records":[]}\n'
                )
                yield averaging_pb2.DownloadData(metadata=b'{"round":0,"digest":"' + b"0" * (2 * 1024 * 1024) + b'"}\n')

        async def state_handler(_req, _ctx):
            self.count("state_calls")
            if mode == "stall":
                await asyncio.sleep(3600)
            if mode == "flood":
                part = runtime_pb2.Tensor(
                    buffer=os.urandom(64 * 1024), size=[16 * 1024], dtype="float32", compression=runtime_pb2.NONE
                )
                meta = json.dumps(
                    {"round": self.offer["round"], "sha256": self.offer["sha256"], "names": ["w"]}
                ).encode()
                for i in range(10_000):  # 640 MB, unless the joiner hangs up first
                    yield averaging_pb2.DownloadData(tensor_part=part, metadata=meta if i == 0 else b"")
                    self.count("bytes_sent", len(part.buffer))
                    part = runtime_pb2.Tensor(buffer=part.buffer)  # continuation parts carry no dtype

        async def bigmsg(_info, reader, writer):
            self.count("log_calls")
            try:
                await P2P.receive_protobuf(averaging_pb2.DownloadData, reader)
                writer.write(P2P.MESSAGE_MARKER + (100 * 1024 * 1024).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER))
                chunk = b"\n" * (1024 * 1024)
                for _ in range(100):
                    writer.write(chunk)
                    await writer.drain()
                    self.count("bytes_sent", len(chunk))
            except Exception:  # noqa: BLE001 - the joiner hung up
                pass
            finally:
                writer.close()

        async def go():
            p2p = self.t.p2p
            await p2p.add_protobuf_handler(f"{self.prefix}.info", info, averaging_pb2.DownloadData)
            if mode == "bigmsg":
                await p2p.add_binary_stream_handler(f"{self.prefix}.log", bigmsg)
            else:
                await p2p.add_protobuf_handler(
                    f"{self.prefix}.log", log_handler, averaging_pb2.DownloadData, stream_output=True
                )
            await p2p.add_protobuf_handler(
                f"{self.prefix}.state", state_handler, averaging_pb2.DownloadData, stream_output=True
            )

        self.t._call(go())


def newest_agreed(client: RecordClient, run_id: str) -> dict | None:
    """The newest hash round whose votes agree (the swarm's own hash: an offer a joiner admits)."""
    found = pick_manifest(client.read_manifests(run_id, lambda v: RunManifest(**v)), run_id)
    if found is None:
        return None
    m = found[1]
    last = int((time.time() - m.start_time) // m.round_seconds)
    for q in range(last - last % m.hash_every, -1, -m.hash_every):
        votes = [h.sha256 for h in client.read_hashes(run_id, q).values()]
        if len(votes) >= 2 and len(set(votes)) == 1:
            return {"round": q, "sha256": votes[0], "bytes": 1000}
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--initial-peers", action="append", required=True)
    ap.add_argument("--modes", default="crash,flood,bigmsg,stall,liar")
    ap.add_argument("--tarpits", type=int, default=0)
    ap.add_argument("--tarpit-port", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import logging

    from onebyte import logbounds

    logging.basicConfig(level="WARNING")
    logbounds.install()  # its own DHT nodes read the poisoned keys too: keep the test's disk use small
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats: dict = {"tarpits": args.tarpits}
    lock = threading.Lock()
    nodes = [Node(mode, args.run_id, args.initial_peers, stats, lock) for mode in args.modes.split(",") if mode]
    for n in nodes:
        n.register()

    def dump() -> None:
        with lock:
            text = json.dumps(stats)
        with open(args.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)

    for n in nodes:
        if n.mode != "flood":
            n.beat()
    if args.tarpits:  # fake live peers: fresh keys, validly signed heartbeats, addresses that stall
        for _ in range(args.tarpits):
            ident = Identity()
            hb = Heartbeat(
                version=__version__,
                round=10**6,
                sha256="",
                made=1,
                rate=1.0,
                p2p_id=random_peer_id(),
                p2p_addrs=[f"/ip4/127.0.0.1/tcp/{args.tarpit_port}"],
            )
            store_raw(
                nodes[0].dht,
                peers_key(args.run_id),
                subkey_of(ident),
                SER.dumps(hb.model_dump()),
                time.time() + 600,
                sign_with=ident,
            )
    stats["tarpits_ready"] = time.time()
    dump()
    flood = next((n for n in nodes if n.mode == "flood"), None)
    while (
        flood is not None and flood.offer is None and not stop.is_set()
    ):  # an offer a joiner admits needs an agreed hash round
        flood.offer = newest_agreed(flood.client, args.run_id)
        stop.wait(1.0)
    if flood is not None:
        flood.beat()
    stats["flood_offer"] = flood.offer if flood else None
    stats["ready"] = time.time()
    while not stop.is_set():
        dump()
        stop.wait(1.0)
    for n in nodes:
        n.t.close()
        n.dht.shutdown()


if __name__ == "__main__":
    main()
