"""A Sybil attacker against a live run: python -m tests.adversaries.sybil_attacker MODE KEYS RUN_ID WORKDIR MADDR...

One DHT node of its own and KEYS fresh Ed25519 keys (free, as in a public run); every record is
signed by its key and stored with hivemind's own store RPC on every node it knows
(tests/adversaries/hostile_client.py), so the honest nodes' validators accept it. Modes:

  votes        the keys do not contribute; at every hash round each stores a hash record claiming
               one forged state, ground so that its hash starts with "0" (it wins most ties that
               go to the smallest hash). The attacker serves that state as a checkpoint over the
               real p2p handlers, offered in turn for the newest final hash round, a non-hash
               round and a round far in the future, and sends heartbeats, so joiners and repairing
               peers see it as a source (it serves no seed log).
  contribute   the same, and every key also contributes one plain code (1.0) to every round, on
               time, so its votes come from keys that are in the round sets.
  flood R[:N]  in rounds R..R+N-1 (N = 2 by default), every key contributes contribs_per_round codes of
               the largest byte (0x7f); nothing else. All of them are stored at the start, in batches.

It writes WORKDIR/attacker.json: its keys and the forged hash, and what it served.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

from onebyte.coordinator_free.manifest import RunManifest, pick_manifest
from onebyte.coordinator_free.rounds import RoundClock
from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import HashRecord, Heartbeat, hash_key, peers_key, round_key
from onebyte.p2p.serving import ServeBudget
from onebyte.p2p.transfer import ServedState, Transfer
from onebyte.peer.checkpoint import save_checkpoint
from tests.adversaries.hostile_client import SER, signed, store_many_raw, store_raw, subkey_of

log = logging.getLogger("sybil")


def write_info(workdir: Path, out: dict) -> None:
    tmp = workdir / "attacker.json.tmp"
    tmp.write_text(json.dumps(out))
    tmp.replace(workdir / "attacker.json")


def forged_state(manifest: RunManifest, workdir: Path):
    """The run's model with every weight moved, ground until its hash starts with "0" (a tie that goes
    to the smallest hash is then the attacker's unless the honest hash starts with "0" too)."""
    from onebyte.peer.train import TrainConfig, build
    from onebyte.settings import train_fields

    _, _, replica = build(TrainConfig(**train_fields(manifest), progress=False))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, t in replica.params:
            t.add_(torch.randn(t.shape, generator=gen) * 0.5)
        name, first = replica.params[0]
        tries = 0
        while not replica.sha256().startswith("0"):
            first.view(-1)[0] += 1e-3
            tries += 1
    return replica, tries


def flood_records(dht, keys: list[Identity], run_id: str, r: int, clock: RoundClock, k: int) -> None:
    """Every key's record for round r: k codes of the largest byte (0x7f: +g_max), published at the round's
    opening (on time), signed here and stored in batches."""
    value = SER.dumps([1, r, clock.open_at(r), b"\x7f" * k])
    key, expiration = round_key(run_id, r), clock.close(r) + 3600
    items = [(subkey_of(i), signed(i, key, subkey_of(i), value, expiration)) for i in keys]
    t0 = time.time()
    accepted = store_many_raw(dht, key, items, expiration)
    log.info("flooded round %d: %d records, %d stores accepted in %.1fs", r, len(items), accepted, time.time() - t0)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    mode = argv.pop(0)
    flood_round, flood_rounds = map(int, (argv.pop(0) + ":2").split(":")[:2]) if mode == "flood" else (None, 0)
    n_keys, run_id, workdir, maddrs = int(argv[0]), argv[1], Path(argv[2]), argv[3:]
    keys = [Identity.load_or_create(None) for _ in range(n_keys)]
    me = keys[0]  # the attacker's DHT node signs as its first key
    dht = start_dht(me, maddrs)
    client = RecordClient(dht, me)
    deadline = time.time() + 300
    picked = None
    while picked is None and time.time() < deadline:
        picked = pick_manifest(client.read_manifests(run_id, lambda v: RunManifest(**v)), run_id)
        time.sleep(0.5)
    if picked is None:
        log.error("no manifest for %s", run_id)
        return 2
    m = picked[1]
    clock = RoundClock(m.start_time, m.round_seconds, m.publish_margin, m.settle_seconds)
    # its DHT node's addresses: a joiner that bootstraps through it too has it in its routing table, so that its
    # heartbeats are among the sources a joiner asks first (PROTOCOL §14), as a well-connected attacker's would be
    maddrs = [str(a) for a in dht.get_visible_maddrs(latest=True)]
    out = {"keys": [k.peer_id for k in keys], "mode": mode, "served": [], "maddrs": maddrs}
    transfer = None
    offers: list[tuple[int, str]] = []
    if mode in ("votes", "contribute"):
        replica, tries = forged_state(m, workdir)
        forged = replica.sha256()
        out |= {"forged_sha256": forged, "grind_tries": tries}
        path = workdir / "forged.safetensors"
        save_checkpoint(path, replica.params, 0, {"run_id": run_id, "initial_sha256": m.initial_sha256})
        transfer = Transfer(dht, run_id)
        served = out["served"]

        def checkpoint():
            newest_hash = max(0, clock.last_final(time.time()) // m.hash_every * m.hash_every)
            offers[:] = [(newest_hash, forged), (newest_hash + 1, forged), (newest_hash + 10_000, forged)]
            q, sha = offers[len(served) % 3]
            served.append(q)
            return path, q, sha

        # an attacker runs whatever server it likes: none of an honest peer's serving budget or .info cache (its
        # offer changes at every call)
        transfer.budget = ServeBudget(streams=10**6, per_requester=10**6, per_minute=10**6)
        transfer.serve(ServedState(lambda: None, lambda a, b: [], lambda a, b: 0, checkpoint), info_cache_seconds=0)
    write_info(workdir, out)
    log.info("SYBIL ATTACKER %s with %d keys on run %s", mode, n_keys, run_id)
    done_rounds: set[int] = set()
    done_votes: set[int] = set()
    next_beat = 0.0
    while True:
        now = time.time()
        r_now = clock.round_at(now)
        if transfer is not None and now >= next_beat:  # three keys advertise the one server: three offers per look
            for k in keys[:3]:
                hb = Heartbeat(
                    version="0",
                    round=max(-1, clock.last_final(now)),
                    sha256="",
                    made=0,
                    rate=0.0,
                    p2p_id=transfer.p2p_id,
                    p2p_addrs=transfer.addrs,
                )
                store_raw(dht, peers_key(run_id), subkey_of(k), SER.dumps(hb.model_dump()), now + 150.0, sign_with=k)
            next_beat = now + 10.0
            write_info(workdir, out)
        if mode == "flood":  # every flooded round's records at once, well ahead, in batches (they are many)
            for r in range(flood_round, flood_round + flood_rounds):
                if r not in done_rounds:
                    flood_records(dht, keys, run_id, r, clock, m.contribs_per_round)
                    done_rounds.add(r)
        # records for the coming rounds are stored ahead (published_at = the round's opening: on time)
        for r in range(max(0, r_now), max(0, r_now) + 4):
            if r in done_rounds:
                continue
            if mode == "contribute":
                value = SER.dumps([1, r, clock.open_at(r), b"\x41"])
            else:
                done_rounds.add(r)
                continue
            for k in keys:
                store_raw(dht, round_key(run_id, r), subkey_of(k), value, clock.close(r) + 3600, sign_with=k)
            done_rounds.add(r)
        if mode in ("votes", "contribute"):
            first = max(0, r_now) // m.hash_every * m.hash_every
            for q in range(first, first + 3 * m.hash_every, m.hash_every):
                if q in done_votes:
                    continue
                vote = HashRecord(round=q, sha256=out["forged_sha256"], set_digest="0" * 64, contributions=n_keys)
                for k in keys:
                    store_raw(
                        dht,
                        hash_key(run_id, q),
                        subkey_of(k),
                        SER.dumps(vote.model_dump()),
                        clock.close(q) + 3600,
                        sign_with=k,
                    )
                done_votes.add(q)
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
