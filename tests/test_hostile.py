"""A hostile world (issue 6): an attacker on the same DHT, a peer that always pushes the extreme
byte, outsiders in a private run. Real `onebyte peer` processes and real hivemind DHT nodes on
loopback; the attacker is a DHT node of its own that stores raw records (tests/hostile_client.py).

What tests/test_swarm.py already checks (a forged store through hivemind's own `store`, a
non-record value, a wrong round, 50 codes, a record stored after its round closed) is not
repeated here.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from hivemind.utils import get_dht_time

from onebyte.coordinator_free.manifest import RunManifest, pick_manifest
from onebyte.coordinator_free.rounds import RoundClock
from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import ContributionRecord, round_key
from onebyte.dht.validator import owner_subkey
from tests.hostile_client import SER, fetch_raw, known_nodes, signed, store_raw, subkey_of
from tests.swarm_utils import TINY, Swarm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_log(ckdir: Path) -> dict[int, list[tuple[str, str]]]:
    """A peer's seed log (docs/PROTOCOL.md §14): round -> [(public key hex, codes hex)], later lines win."""
    out: dict[int, list] = {}
    for f in ckdir.glob("*/seedlog.jsonl"):
        for line in f.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            out[e["round"]] = [tuple(r) for r in e["records"]]
    return out


def scrape(port: int) -> dict[tuple[str, str], float]:
    """onebyte_records_rejected_total by (reason, stage) from a live peer's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for m in re.finditer(r'^onebyte_records_rejected_total\{reason="([^"]+)",stage="([^"]+)"\} (\S+)$', text, re.M):
        out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def attach(swarm: Swarm, run_id: str, peers: int):
    """The attacker's own DHT node, the run's manifest and clock, and the honest peers' ids."""
    attacker = Identity()
    dht = start_dht(attacker, swarm.maddrs)
    client = RecordClient(dht, attacker)
    found = pick_manifest(client.read_manifests(run_id, lambda v: RunManifest(**v)), run_id)
    assert found is not None
    m = found[1]
    deadline = time.time() + 60
    while len(honest := client.read_peers(run_id)) < peers and time.time() < deadline:
        time.sleep(1)
    assert len(honest) == peers, honest
    while known_nodes(dht) < peers + 1 and time.time() < deadline:  # the bootstrap node and every peer's
        time.sleep(0.5)
    return attacker, dht, client, m, RoundClock(m.start_time, m.round_seconds, m.publish_margin, m.settle_seconds), sorted(honest)


def test_records_from_a_hostile_dht_client_are_refused_or_rejected_by_reason_and_change_nothing(tmp_path):
    run, rounds, k = "hostile6", 18, 2
    port = free_port()
    ck = {n: tmp_path / f"{n}.ck" for n in "abc"}
    with Swarm(tmp_path) as swarm:
        common = ["--run-id", run, "--rounds", str(rounds), "--batch-size", "4", "--checkpoint-interval", "0", "--threads", "1"]
        swarm.peer("a", *common, "--new-run", "--start-delay", "10", *TINY, "--round-seconds", "3", "--contribs-per-round", str(k),
                   "--hash-every", "3", "--shard", "0/3", "--checkpoint-dir", str(ck["a"]), "--metrics-port", str(port))
        swarm.peer("b", *common, "--shard", "1/3", "--checkpoint-dir", str(ck["b"]))
        swarm.peer("c", *common, "--shard", "2/3", "--checkpoint-dir", str(ck["c"]))
        swarm.wait_for_round("a", 1, timeout=180)
        attacker, dht, client, m, clock, honest = attach(swarm, run, 3)
        try:
            nodes = known_nodes(dht)
            target = clock.round_at(time.time()) + 2
            key, exp = round_key(run, target), clock.close(target) + 3600
            now = time.time()
            good = lambda r, codes=b"\x01": SER.dumps([1, r, now, codes])  # noqa: E731
            refused: dict[str, list[bool]] = {}
            stored: dict[str, list[bool]] = {}
            keys: dict[str, Identity] = {}

            def as_new_key(name: str, value, *, subkey=None, sign=True, k_=key, e=exp):
                ident = keys.setdefault(name, Identity())
                sk = subkey if subkey is not None else subkey_of(ident)
                stored[name] = store_raw(dht, k_, sk, value, e, sign_with=ident if sign else None)

            # -- refused by every DHT node's validator (docs/PROTOCOL.md §9) -------------------
            genuine = [(r, sk, v, e) for r in range(target - 2, -1, -1) for sk, v, e in fetch_raw(dht, round_key(run, r))
                       if sk in {owner_subkey(bytes.fromhex(p)) for p in honest}]
            assert genuine, "no honest record in the DHT to replay"
            old_round, victim_sk, genuine_bytes, genuine_exp = genuine[0]
            tampered = bytearray(genuine_bytes)
            tampered[-65] ^= 0x01  # the last code byte of the payload, signature kept
            own = Identity()
            refused["unsigned"] = store_raw(dht, key, subkey_of(own), good(target), exp)
            refused["bad_signature"] = store_raw(dht, key, subkey_of(own), good(target) + os.urandom(64), exp)
            refused["forged_under_victim_key"] = store_raw(dht, key, victim_sk, good(target, b"\x7f\x7f"), exp, sign_with=attacker)
            refused["replayed_into_new_round"] = store_raw(dht, key, victim_sk, genuine_bytes, genuine_exp)
            refused["replayed_redated"] = store_raw(dht, round_key(run, old_round), victim_sk, genuine_bytes, genuine_exp + 3600)
            refused["tampered"] = store_raw(dht, round_key(run, old_round), victim_sk, bytes(tampered), genuine_exp)
            refused["signed_for_another_round"] = store_raw(dht, key, subkey_of(own), signed(own, round_key(run, target + 1), subkey_of(own), good(target), exp), exp)

            # -- stored (validly signed by their own keys) but rejected by every reader ----------
            malformed = {
                "not_a_record_map": {"round": target}, "version_2": [2, target, now, b"\x01"], "three_fields": [1, target, now],
                "five_fields": [1, target, now, b"\x01", b"x"], "round_as_string": [1, str(target), now, b"\x01"],
                "codes_as_string": [1, target, now, "\x01"], "negative_round": [1, -5, now, b"\x01"],
                "nan_published_at": [1, target, math.nan, b"\x01"], "inf_published_at": [1, target, math.inf, b"\x01"],
                "bare_bytes": b"\x01\x01", "no_codes": [1, target, now, b""],
            }
            for name, value in malformed.items():
                as_new_key(name, SER.dumps(value))
            as_new_key("oversized", ("codes", target, now, 9000))
            as_new_key("wrong_round_far_future", good(target + 10**6))
            as_new_key("wrong_round_max_u64", good(2**64 - 1))
            as_new_key("wrong_round_past", good(0))
            as_new_key("too_many_codes", good(target, b"\x01" * (k + 1)))
            as_new_key("claims_late", SER.dumps([1, target, clock.close(target) + 1000.0, b"\x01"]))
            for name, sk in (("foreign_subkey_bytes", b"evil"), ("foreign_subkey_ob2", b"ob2" + bytes(32)), ("foreign_subkey_35_bytes", bytes(35))):
                as_new_key(name, good(target), subkey=sk, sign=False)
            # harmless by the protocol: a record for a round far in the future, a backdated one for a round every peer applied
            as_new_key("far_future_key", good(target + 10**5), k_=round_key(run, target + 10**5), e=get_dht_time() + 600)
            as_new_key("backdated_past_round", SER.dumps([1, 0, m.start_time, b"\x7f"]), k_=round_key(run, 0), e=get_dht_time() + 600)

            # -- valid records: a contribution re-sent 20 times counts once ---------------------
            dup = keys.setdefault("duplicate", Identity())
            dup_bytes = signed(dup, key, subkey_of(dup), good(target, b"\x02"), exp)
            dup_answers = [store_raw(dht, key, subkey_of(dup), dup_bytes, exp) for _ in range(20)]
            read_before = time.time() < clock.final_at(target)  # all of it is in before the peers read round `target`

            # -- a flood from one key: 120 rounds ahead, then 40 re-stores of one round ------------
            flood = keys.setdefault("flood", Identity())
            t0 = time.time()
            flood_answers = []
            for r in range(target + 1, target + 121):
                flood_answers += store_raw(dht, round_key(run, r), subkey_of(flood), ("codes", r, now, k + 1), clock.close(r) + 3600, sign_with=flood)
            for i in range(40):
                flood_answers += store_raw(dht, round_key(run, target + 1), subkey_of(flood), ("codes", target + 1, now, k + 1), clock.close(target + 1) + 3600 + i,
                          sign_with=flood)
            flood_seconds = time.time() - t0
        finally:
            dht.shutdown()

        # the validator stage (each peer's DHT node) is only visible in the metrics: read them live
        deadline, seen = time.time() + 90, {}
        while time.time() < deadline and swarm.procs["a"].poll() is None:
            try:
                seen = scrape(port)
            except OSError:  # it just left
                break
            if (seen.get(("bad_signature", "validator"), 0) >= 5 and seen.get(("unsigned", "validator"), 0) >= 1
                    and seen.get(("malformed", "round"), 0) >= 1):
                break
            time.sleep(2)
        for name in "abc":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "abc"}
        logs = {n: seed_log(ck[n]) for n in "abc"}

    print(json.dumps({"nodes": nodes, "flood_accepted": sum(flood_answers), "flood_answers": len(flood_answers), "target": target, "flood_stores": 160, "flood_seconds": round(flood_seconds, 2),
                      "rejected": {n: r["rejected"] for n, r in reports.items()}, "validator_metrics": {f"{a}/{b}": v for (a, b), v in seen.items()}}))
    assert read_before, "the injection took longer than the round: nothing was tested"
    # every node refused every forged, unsigned, tampered, replayed or re-dated record
    for name, answers in refused.items():
        assert answers and not any(answers), (name, answers)
    assert all(all(a) for a in stored.values()), {n: a for n, a in stored.items() if not all(a)}
    assert all(all(a) for a in dup_answers[:1]), dup_answers
    # ... and counted it by reason (the validator stage of peer a's metrics)
    assert seen.get(("unsigned", "validator"), 0) >= 1, seen
    assert seen.get(("bad_signature", "validator"), 0) >= 5, seen

    assert seen.get(("malformed", "parse"), 0) >= len(malformed) - 1 and seen.get(("malformed", "round"), 0) >= 1, seen  # no_codes parses

    # every honest peer rejected every stored bad record, by reason (report JSON `rejected`)
    for n, r in reports.items():
        rej = r["rejected"]
        # >= len - 1, not len: the report merges the parse and round stages' counts with `|`, so the round
        # stage's 'malformed' (the record with no codes) is overwritten by the parse stage's (see RELIABILITY.md)
        assert rej.get("malformed", 0) >= len(malformed) - 1, (n, rej)
        assert rej.get("oversized", 0) >= 1 and rej.get("foreign_subkey", 0) >= 3, (n, rej)
        assert rej.get("wrong_round", 0) >= 3 and rej.get("late", 0) >= 1, (n, rej)
        assert rej.get("too_many_codes", 0) >= 2, (n, rej)  # the too-many record and the flood's record for round target+1

    # one agreed history: the same weights, the same seed log, every round applied
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {n: r["final_sha256"][:12] for n, r in reports.items()}
    assert logs["a"] == logs["b"] == logs["c"]
    assert all(r["last_round"] == rounds - 1 and r["hash_mismatches"] == 0 for r in reports.values())
    history = logs["a"]
    assert sorted(history) == list(range(rounds))
    contributors = {pk for recs in history.values() for pk, _ in recs}
    bad_keys = {keys[n].peer_id for n in keys if n != "duplicate"}
    assert not contributors & bad_keys, "a rejected record was applied"
    assert contributors - set(honest) <= {dup.peer_id}
    # the duplicate: one record, one contribution, in its round only
    assert [c for pk, c in history[target] if pk == dup.peer_id] == ["02"]
    assert sum(1 for recs in history.values() for pk, _ in recs if pk == dup.peer_id) == 1
    # round 0 was applied before the backdated record arrived, so nobody took it
    assert all(pk in honest for pk, _ in history[0])
    # every honest contribution published was applied by everyone, and honest peers kept training
    published = sum(r["contributions_published"] for r in reports.values())
    applied = sum(len(c) // 2 for recs in history.values() for pk, c in recs if pk in honest)
    assert published == applied > 0
    assert all(r["contributions_published"] > 0 for r in reports.values())


# -- records that break hivemind's reader or storage: bugs, reproduced with real DHT nodes --------------------

def _three_nodes():
    reader, writer, attacker = Identity(), Identity(), Identity()
    r_dht = start_dht(reader, [])
    maddrs = [str(a) for a in r_dht.get_visible_maddrs()]
    return (reader, r_dht), (writer, start_dht(writer, maddrs)), (attacker, start_dht(attacker, maddrs))


@pytest.mark.xfail(strict=True, reason="bug: a validly signed value that is not msgpack makes hivemind's get of the whole key fail "
                                       "(FormatError in _SearchState.finish_search; lean_read raises it): every peer's read of that round "
                                       "times out and the peer stops. Fix: the validator must refuse values that do not deserialize.")
@pytest.mark.parametrize("lean", [0, 3])
def test_a_signed_value_that_is_not_msgpack_is_rejected_and_hides_no_record(lean):
    (reader, r_dht), (writer, w_dht), (attacker, a_dht) = _three_nodes()
    try:
        key, exp = round_key("nm", 1), get_dht_time() + 600
        assert RecordClient(w_dht, writer)._store(key, ContributionRecord(round=1, published_at=1.0, codes=b"\x01").pack(), exp)
        answers = store_raw(a_dht, key, subkey_of(attacker), b"\xc1 not msgpack", exp, sign_with=attacker)
        client = RecordClient(r_dht, reader, timeout=8, lean_replicas=lean)
        records = client.read_round("nm", 1)
        assert not any(answers) or client.rejected.get("malformed", 0) >= 1
        assert list(records) == [writer.peer_id]
    finally:
        for d in (a_dht, w_dht, r_dht):
            d.shutdown()


@pytest.mark.xfail(strict=True, reason="bug: the validator lets through any record without an onebyte subkey, and hivemind replaces a "
                                       "key's whole subkey dictionary by a plain value with a later expiration (DHTLocalStorage.store): "
                                       "one unsigned store erases a round and blocks every later honest store under that key. Fix: the "
                                       "validator must refuse records whose subkey is not an ob1 subkey (plain values included).")
def test_an_unsigned_plain_value_neither_erases_nor_blocks_a_round():
    (reader, r_dht), (writer, w_dht), (attacker, a_dht) = _three_nodes()
    try:
        w = RecordClient(w_dht, writer)
        before, after = round_key("pv", 1), round_key("pv", 2)
        rec = lambda r: ContributionRecord(round=r, published_at=1.0, codes=b"\x01").pack()  # noqa: E731
        assert w._store(before, rec(1), get_dht_time() + 600)
        year = get_dht_time() + 365 * 86400
        a_dht.store(before, b"erased", year)  # hivemind's own store, no subkey: what any DHT member can do
        a_dht.store(after, b"blocked", year)
        stored_after = w._store(after, rec(2), get_dht_time() + 600)
        client = RecordClient(r_dht, reader, timeout=8)
        assert list(client.read_round("pv", 1)) == [writer.peer_id]
        assert stored_after and list(client.read_round("pv", 2)) == [writer.peer_id]
    finally:
        for d in (a_dht, w_dht, r_dht):
            d.shutdown()


# -- a peer that always sends the extreme byte ----------------------------------------------------------------

def attacker_share(history: dict, manifest: dict, attacker: str) -> list[dict]:
    """Replay a seed log from the initial weights; for every round, how far the attacker's own
    contributions moved any single weight (max |sum over its codes of c_k z_k|) against the bound
    K * lr * g_max / n of docs/PROTOCOL.md §5, and the replayed final hash."""
    import torch

    from onebyte.peer.train import TrainConfig, build
    from onebyte.zo import apply_round, contribution_seed

    keys = ("model", "model_kind", "dtype", "trainable", "init_seed", "dataset", "task", "text_column", "label_column", "label_words",
            "template", "max_length", "lr", "eps", "weight_decay", "codec", "table_log2")
    _, _, replica = build(TrainConfig(**{k: manifest[k] for k in keys}, progress=False))
    assert replica.sha256() == manifest["initial_sha256"]
    run, lr, codec = manifest["run_id"], manifest["lr"], replica.codec
    rows = []
    for q in sorted(history):
        contribs, mine = [], []
        for pk, codes_hex in history[q]:
            for i, b in enumerate(bytes.fromhex(codes_hex)):
                contribs.append((contribution_seed(run, pk, q, i), codec.decode(b)))
                if pk == attacker:
                    mine.append(contribs[-1])
        n = len(contribs)
        if mine:  # the attacker's part of D alone: same coefficients -lr*v/n, applied to zeros
            zeros = [(name, torch.zeros_like(t)) for name, t in replica.params]
            apply_round(zeros, [(s, v * len(mine) / n) for s, v in mine], lr, replica.noise)
            moved = max(float(t.abs().max()) for _, t in zeros)
            rows.append({"round": q, "n": n, "attacker_codes": len(mine), "max_move": moved, "bound": len(mine) * lr * codec.max_value / n,
                         "per_contribution_bound": lr * codec.max_value / n})
        replica.apply(contribs)
    return rows, replica.sha256()


def test_a_peer_that_always_sends_the_extreme_byte_is_bounded_flagged_and_changes_no_agreement(tmp_path):
    run, rounds, k = "extreme6", 16, 8
    with Swarm(tmp_path) as swarm:
        common = ["--run-id", run, "--rounds", str(rounds), "--batch-size", "4", "--checkpoint-interval", "0", "--threads", "1"]
        swarm.peer("a", *common, "--new-run", "--start-delay", "10", *TINY, "--round-seconds", "3", "--contribs-per-round", str(k),
                   "--hash-every", "2", "--shard", "0/3", "--checkpoint-dir", str(tmp_path / "a.ck"))
        swarm.peer("b", *common, "--shard", "1/3")
        swarm.peer("x", *common, "--shard", "2/3", "--identity", str(tmp_path / "x.pem"), launcher=("-m", "tests.hostile_peer", "extreme", "against"))
        for name in "abx":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "abx"}
        history = seed_log(tmp_path / "a.ck")
        x_log = swarm.log("x")
    assert "HOSTILE PEER: extreme against" in x_log
    x = reports["x"]["peer_id"]
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {n: r["final_sha256"][:12] for n, r in reports.items()}
    assert all(r["hash_mismatches"] == 0 for r in reports.values())
    # every code it sent is the largest magnitude: 0x7f or 0xff
    x_codes = [b for recs in history.values() for pk, c in recs if pk == x for b in bytes.fromhex(c)]
    assert len(x_codes) >= 32 and set(x_codes) <= {0x7F, 0xFF}, x_codes[:10]
    # detected: both honest peers flag it (and nobody else) in their report
    for n in "ab":
        sus = reports[n]["suspects"]
        assert set(sus) == {x}, (n, sus)
        assert sus[x]["reason"] == "saturated codes" and sus[x]["saturated_share"] == 1.0, sus
    # bounded: in every round it moved no weight by more than K * lr * g_max / n, and it did reach that
    rows, replayed = attacker_share(history, reports["a"]["manifest"], x)
    assert replayed == reports["a"]["final_sha256"]  # the seed log is the history the swarm applied
    assert rows and all(r["attacker_codes"] <= k for r in rows)
    for r in rows:
        assert r["max_move"] <= r["bound"] * (1 + 1e-5), r
        assert r["max_move"] >= 0.99 * r["bound"], r  # (some weight sees all its codes' z agree)
    print(json.dumps({"rounds": rows, "suspects": reports["a"]["suspects"]}))


# -- a private run ----------------------------------------------------------------------------------------------

def identity_key(path: Path) -> str:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "onebyte.peer.cli", "identity", "--identity", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_private_run_applies_only_listed_keys_and_an_outsider_follows_without_counting(tmp_path):
    run, rounds = "private6", 12
    listed = {n: identity_key(tmp_path / f"{n}.pem") for n in "ab"}
    allow = tmp_path / "allowed.txt"
    allow.write_text("# the run's members\n" + "".join(f"{k}  # {n}\n" for n, k in listed.items()))
    with Swarm(tmp_path) as swarm:
        common = ["--run-id", run, "--rounds", str(rounds), "--batch-size", "4", "--threads", "1"]
        swarm.peer("a", *common, "--identity", str(tmp_path / "a.pem"), "--new-run", "--start-delay", "10", *TINY, "--round-seconds", "3",
                   "--contribs-per-round", "2", "--hash-every", "3", "--allowed-peers", str(allow))
        swarm.peer("b", *common, "--identity", str(tmp_path / "b.pem"), "--shard", "1/3")
        swarm.peer("o", *common, "--identity", str(tmp_path / "o.pem"), "--shard", "2/3")
        for name in "abo":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "abo"}
        o_log = swarm.log("o")
    assert reports["a"]["manifest"]["allowed_peers"] == sorted(listed.values())
    assert {n: reports[n]["peer_id"] for n in "ab"} == listed
    assert "is private and this peer's key is not on its list" in o_log
    assert reports["o"]["contributions_published"] > 0  # it tried
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {n: r["final_sha256"][:12] for n, r in reports.items()}
    members = reports["a"]["contributions_published"] + reports["b"]["contributions_published"]
    assert members > 0
    for n, r in reports.items():
        assert r["rejected"].get("not_allowed", 0) >= 1, (n, r["rejected"])
        assert r["contributions_applied_local"] + r["contributions_applied_remote"] == members, n  # none of the outsider's
        assert r["hash_mismatches"] == 0
    assert reports["o"]["contributions_applied_local"] == 0


@pytest.mark.xfail(strict=True, reason="bug: hash agreement (SwarmPeer._check_hashes, _swarm_hash) counts every key's hash record, "
                                       "also in a private run: three outsider keys outvote the members, who then try to repair from the "
                                       "outsiders (and would install an outsider's checkpoint if one were served). Fix: in a private run "
                                       "count only allowed_peers' hash records.")
def test_outsiders_cannot_vote_in_a_private_runs_hash_agreement(tmp_path):
    from onebyte.dht.records import HashRecord, hash_key

    run, rounds = "private6h", 12
    listed = {n: identity_key(tmp_path / f"{n}.pem") for n in "ab"}
    allow = tmp_path / "allowed.txt"
    allow.write_text("".join(k + "\n" for k in listed.values()))
    with Swarm(tmp_path) as swarm:
        common = ["--run-id", run, "--rounds", str(rounds), "--batch-size", "4", "--threads", "1"]
        swarm.peer("a", *common, "--identity", str(tmp_path / "a.pem"), "--new-run", "--start-delay", "10", *TINY, "--round-seconds", "3",
                   "--contribs-per-round", "2", "--hash-every", "2", "--allowed-peers", str(allow))
        swarm.peer("b", *common, "--identity", str(tmp_path / "b.pem"), "--shard", "1/2")
        swarm.wait_for_round("a", 0, timeout=180)
        _, dht, _, m, clock, _ = attach(swarm, run, 2)
        try:
            fake = "0" * 64
            sybils = [Identity() for _ in range(3)]
            first = clock.round_at(time.time()) + 1
            for q in range(first, rounds):
                if q % m.hash_every == 0:
                    value = SER.dumps(HashRecord(round=q, sha256=fake, set_digest=fake, contributions=1).model_dump())
                    for s in sybils:
                        assert all(store_raw(dht, hash_key(run, q), subkey_of(s), value, clock.close(q) + 3600, sign_with=s))
        finally:
            dht.shutdown()
        for name in "ab":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "ab"}
    assert reports["a"]["final_sha256"] == reports["b"]["final_sha256"]
    for n, r in reports.items():
        assert r["hash_mismatches"] == 0 and r["repairs"] == 0 and r["repairs_failed"] == 0, (n, r["hash_mismatches"], r["repairs_failed"])
