"""A crowd of greedy downloaders against one honest peer's catch-up service:
python -m tests.adversaries.greedy_downloader --run-id R --target PEER_ID_PREFIX --initial-peers M ... --out F.

It reads the run's heartbeats through a DHT node of its own to find the target's p2p id and
addresses, then, from ``--identities`` libp2p identities of its own (a p2p daemon each, as many
requesters as a crowd would be), fires waves of ``--state`` concurrent ``.state`` and ``--log``
concurrent ``.log`` requests (the whole log) with the honest client's own calls, one wave after
another, for ``--seconds``. It counts what it got (served, refused busy, failed) and writes it to
--out.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

from hivemind.p2p import P2P

from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.p2p.transfer import Transfer, TransferError


class _P2POnly:
    """What Transfer asks of a DHT: a p2p daemon of its own (a fresh libp2p identity, made on Transfer's event
    loop) and its addresses."""

    maddrs: list = []

    async def replicate_p2p(self) -> P2P:
        p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        self.maddrs = await p2p.get_visible_maddrs()
        return p2p

    def get_visible_maddrs(self):
        return self.maddrs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--target", required=True, help="the honest peer's id (a prefix)")
    ap.add_argument("--initial-peers", nargs="+", required=True)
    ap.add_argument("--identities", type=int, default=5)
    ap.add_argument("--state", type=int, default=50)
    ap.add_argument("--log", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    ident = Identity()
    dht = start_dht(ident, args.initial_peers, client_mode=True)
    client = RecordClient(dht, ident)
    target = None
    deadline = time.time() + 120
    while target is None and time.time() < deadline:
        target = next((hb for p, hb in client.read_peers(args.run_id).items() if p.startswith(args.target)), None)
        if target is None or not target.p2p_id:
            target = None
            time.sleep(1)
    if target is None:
        raise SystemExit(f"greedy_downloader: no heartbeat of {args.target} in run {args.run_id}")
    transfers = [Transfer(_P2POnly(), args.run_id) for _ in range(args.identities)]
    for t in transfers:
        t.connect(target.p2p_id, target.p2p_addrs)
    span = transfers[0].info(target.p2p_id)["log"] or [0, 0]
    counts = {"state": {"served": 0, "busy": 0, "failed": 0}, "log": {"served": 0, "busy": 0, "failed": 0}}
    served_bytes = 0

    def one(kind: str, i: int) -> None:
        nonlocal served_bytes
        t = transfers[i % len(transfers)]
        try:
            if kind == "state":
                _, tensors = t.fetch_state(target.p2p_id, timeout=60)
                served_bytes += sum(x.numel() * x.element_size() for x in tensors.values())
            else:
                lines = t.fetch_log(target.p2p_id, span[0], span[1])
                served_bytes += sum(map(len, lines))
            counts[kind]["served"] += 1
        except TransferError as e:
            counts[kind]["busy" if "is busy" in str(e) else "failed"] += 1

    waves, start = 0, time.time()
    with ThreadPoolExecutor(args.state + args.log) as pool:
        while time.time() - start < args.seconds:
            jobs = [pool.submit(one, "state", i) for i in range(args.state)]
            jobs += [pool.submit(one, "log", i) for i in range(args.log)]
            for j in jobs:
                j.result()
            waves += 1
    result = {"waves": waves, "seconds": time.time() - start, "counts": counts, "served_bytes": served_bytes}
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result), flush=True)
    for t in transfers:
        t.close()
    dht.shutdown()


if __name__ == "__main__":
    main()
