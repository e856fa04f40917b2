"""A hostile world (issue 6): an attacker on the same DHT, a peer that always pushes the extreme
byte, outsiders in a private run. Real `onebyte peer` processes and real hivemind DHT nodes on
loopback; the attacker is a DHT node of its own that stores raw records (tests/adversaries/hostile_client.py).

What tests/swarm/test_swarm.py already checks (a forged store through hivemind's own `store`, a
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
from tests.adversaries.hostile_client import SER, fetch_raw, known_nodes, signed, store_raw, subkey_of
from tests.support.figures import record
from tests.support.swarm import START, TINY, WAIT, Swarm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_log(ckdir: Path, *, first: bool = False) -> dict[int, list[tuple[str, str]]]:
    """A peer's seed log (docs/PROTOCOL.md §14): round -> [(public key hex, codes hex)]. Later lines
    win, as in the peer; ``first=True`` keeps the first line of each round instead: the log is
    append-only, so that is what the peer applied itself before any repair rewrote the round."""
    out: dict[int, list] = {}
    for f in ckdir.glob("*/seedlog.jsonl"):
        for line in f.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if not (first and e["round"] in out):
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
    return (
        attacker,
        dht,
        client,
        m,
        RoundClock(m.start_time, m.round_seconds, m.publish_margin, m.settle_seconds),
        sorted(honest),
    )


@pytest.mark.long
def test_records_from_a_hostile_dht_client_are_refused_or_rejected_by_reason_and_change_nothing(tmp_path):
    run, rounds, k = "hostile6", 15, 2
    port = free_port()
    ck = {n: tmp_path / f"{n}.ck" for n in "abc"}
    with Swarm(tmp_path, in_process=True) as swarm:
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
        swarm.peer("b", *common, *WAIT, "--shard", "1/3", "--checkpoint-dir", str(ck["b"]))
        swarm.peer("c", *common, *WAIT, "--shard", "2/3", "--checkpoint-dir", str(ck["c"]))
        swarm.wait_waiting("b", "c")
        swarm.peer(
            "a",
            *common,
            "--new-run",
            "--start-delay",
            START,
            *TINY,
            "--round-seconds",
            "3",
            "--contribs-per-round",
            str(k),
            "--hash-every",
            "3",
            "--shard",
            "0/3",
            "--checkpoint-dir",
            str(ck["a"]),
            "--metrics-port",
            str(port),
        )
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
            genuine = [
                (r, sk, v, e)
                for r in range(target - 2, -1, -1)
                for sk, v, e in fetch_raw(dht, round_key(run, r))
                if sk in {owner_subkey(bytes.fromhex(p)) for p in honest}
            ]
            assert genuine, "no honest record in the DHT to replay"
            old_round, victim_sk, genuine_bytes, genuine_exp = genuine[0]
            tampered = bytearray(genuine_bytes)
            tampered[-65] ^= 0x01  # the last code byte of the payload, signature kept
            own = Identity()
            refused["unsigned"] = store_raw(dht, key, subkey_of(own), good(target), exp)
            refused["bad_signature"] = store_raw(dht, key, subkey_of(own), good(target) + os.urandom(64), exp)
            refused["forged_under_victim_key"] = store_raw(
                dht, key, victim_sk, good(target, b"\x7f\x7f"), exp, sign_with=attacker
            )
            refused["replayed_into_new_round"] = store_raw(dht, key, victim_sk, genuine_bytes, genuine_exp)
            refused["replayed_redated"] = store_raw(
                dht, round_key(run, old_round), victim_sk, genuine_bytes, genuine_exp + 3600
            )
            refused["tampered"] = store_raw(dht, round_key(run, old_round), victim_sk, bytes(tampered), genuine_exp)
            for name, sk in (
                ("foreign_subkey_bytes", b"evil"),
                ("foreign_subkey_ob2", b"ob2" + bytes(32)),
                ("foreign_subkey_35_bytes", bytes(35)),
            ):
                refused[name] = store_raw(dht, key, sk, good(target), exp)
            refused["plain_value_over_the_round"] = store_raw(
                dht, key, None, SER.dumps(b"erased"), get_dht_time() + 365 * 86400
            )
            refused["not_msgpack"] = store_raw(dht, key, subkey_of(own), b"\xc1 not msgpack", exp, sign_with=own)
            # storage is bounded: a value larger than any reader accepts, an expiration a year ahead
            big, far = keys.setdefault("oversized", Identity()), keys.setdefault("expires_in_a_year", Identity())
            refused["oversized"] = store_raw(dht, key, subkey_of(big), ("codes", target, now, 9000), exp, sign_with=big)
            refused["expires_in_a_year"] = store_raw(
                dht, key, subkey_of(far), good(target), get_dht_time() + 365 * 86400, sign_with=far
            )
            refused["signed_for_another_round"] = store_raw(
                dht,
                key,
                subkey_of(own),
                signed(own, round_key(run, target + 1), subkey_of(own), good(target), exp),
                exp,
            )

            # -- stored (validly signed by their own keys) but rejected by every reader ----------
            malformed = {
                "not_a_record_map": {"round": target},
                "version_2": [2, target, now, b"\x01"],
                "three_fields": [1, target, now],
                "five_fields": [1, target, now, b"\x01", b"x"],
                "round_as_string": [1, str(target), now, b"\x01"],
                "codes_as_string": [1, target, now, "\x01"],
                "negative_round": [1, -5, now, b"\x01"],
                "nan_published_at": [1, target, math.nan, b"\x01"],
                "inf_published_at": [1, target, math.inf, b"\x01"],
                "bare_bytes": b"\x01\x01",
                "no_codes": [1, target, now, b""],
            }
            for name, value in malformed.items():
                as_new_key(name, SER.dumps(value))
            as_new_key("wrong_round_far_future", good(target + 10**6))
            as_new_key("wrong_round_max_u64", good(2**64 - 1))
            as_new_key("wrong_round_past", good(0))
            as_new_key("too_many_codes", good(target, b"\x01" * (k + 1)))
            as_new_key("claims_late", SER.dumps([1, target, clock.close(target) + 1000.0, b"\x01"]))
            # harmless by the protocol: a record for a round far in the future, a backdated one for a round every peer
            # applied
            as_new_key(
                "far_future_key", good(target + 10**5), k_=round_key(run, target + 10**5), e=get_dht_time() + 600
            )
            as_new_key(
                "backdated_past_round",
                SER.dumps([1, 0, m.start_time, b"\x7f"]),
                k_=round_key(run, 0),
                e=get_dht_time() + 600,
            )

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
                flood_answers += store_raw(
                    dht,
                    round_key(run, r),
                    subkey_of(flood),
                    ("codes", r, now, k + 1),
                    clock.close(r) + 3600,
                    sign_with=flood,
                )
            for i in range(40):
                flood_answers += store_raw(
                    dht,
                    round_key(run, target + 1),
                    subkey_of(flood),
                    ("codes", target + 1, now, k + 1),
                    clock.close(target + 1) + 3600 + i,
                    sign_with=flood,
                )
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
            if (
                seen.get(("bad_signature", "validator"), 0) >= 5
                and seen.get(("unsigned", "validator"), 0) >= 1
                and seen.get(("not_msgpack", "validator"), 0) >= 1
                and seen.get(("malformed", "round"), 0) >= 1
            ):
                break
            time.sleep(2)
        for name in "abc":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "abc"}
        logs = {n: seed_log(ck[n]) for n in "abc"}

    record(
        "hostile_records",
        dht_nodes=nodes,
        target_round=target,
        refused_by_every_node=sorted(refused),
        stored_then_rejected=sorted(stored),
        malformed_variants=sorted(malformed),
        duplicate_stores=len(dup_answers),
        flood={
            "stores": 160,
            "seconds": flood_seconds,
            "rounds": 120,
            "accepted_by_nodes": sum(flood_answers),
            "answers": len(flood_answers),
        },
        rejected_per_peer={n: r["rejected"] for n, r in reports.items()},
        metrics_peer_a={f"{a}/{b}": v for (a, b), v in sorted(seen.items())},
        distinct_final_hashes=len({r["final_sha256"] for r in reports.values()}),
        hash_mismatches=sum(r["hash_mismatches"] for r in reports.values()),
        rounds=rounds,
        last_rounds={n: r["last_round"] for n, r in reports.items()},
        contributions_published={n: r["contributions_published"] for n, r in reports.items()},
    )
    assert read_before, "the injection took longer than the round: nothing was tested"
    # every node refused every forged, unsigned, tampered, replayed or re-dated record
    for name, answers in refused.items():
        assert answers and not any(answers), (name, answers)
    assert all(all(a) for a in stored.values()), {n: a for n, a in stored.items() if not all(a)}
    assert all(all(a) for a in dup_answers[:1]), dup_answers
    # ... and counted it by reason (the validator stage of peer a's metrics)
    assert seen.get(("unsigned", "validator"), 0) >= 1, seen
    assert seen.get(("bad_signature", "validator"), 0) >= 5, seen
    assert seen.get(("foreign_subkey", "validator"), 0) >= 3 and seen.get(("not_msgpack", "validator"), 0) >= 1, seen
    assert seen.get(("oversized", "validator"), 0) >= 1 and seen.get(("expiration_too_far", "validator"), 0) >= 1, seen

    assert seen.get(("malformed", "parse"), 0) >= len(malformed) - 1 and seen.get(("malformed", "round"), 0) >= 1, (
        seen
    )  # no_codes parses

    # every honest peer rejected every stored bad record, by reason (report JSON `rejected`)
    for n, r in reports.items():
        rej = r["rejected"]
        # the report sums the round, parse and validator stages' counts (per stage: `rejected_by_stage`)
        assert rej.get("malformed", 0) >= len(malformed), (n, rej)
        assert r["rejected_by_stage"]["parse"].get("malformed", 0) >= len(malformed) - 1, (n, r["rejected_by_stage"])
        assert rej.get("wrong_round", 0) >= 3 and rej.get("late", 0) >= 1, (n, rej)
        assert rej.get("too_many_codes", 0) >= 2, (
            n,
            rej,
        )  # the too-many record and the flood's record for round target+1

    # one agreed history: the same weights, the same seed log, every round applied
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {
        n: r["final_sha256"][:12] for n, r in reports.items()
    }
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


# -- records that broke hivemind's reader or storage (found by these tests, now refused by the validator) -------


def _three_nodes():
    reader, writer, attacker = Identity(), Identity(), Identity()
    r_dht = start_dht(reader, [])
    maddrs = [str(a) for a in r_dht.get_visible_maddrs()]
    return (reader, r_dht), (writer, start_dht(writer, maddrs)), (attacker, start_dht(attacker, maddrs))


@pytest.mark.parametrize("lean", [0, 3])
def test_a_signed_value_that_is_not_msgpack_is_rejected_and_hides_no_record(lean):
    (reader, r_dht), (writer, w_dht), (attacker, a_dht) = _three_nodes()
    try:
        key, exp = round_key("nm", 1), get_dht_time() + 600
        assert RecordClient(w_dht, writer)._store(
            key, ContributionRecord(round=1, published_at=1.0, codes=b"\x01").pack(), exp
        )
        answers = store_raw(a_dht, key, subkey_of(attacker), b"\xc1 not msgpack", exp, sign_with=attacker)
        client = RecordClient(r_dht, reader, timeout=8, lean_replicas=lean)
        records = client.read_round("nm", 1)
        assert not any(answers) or client.rejected.get("malformed", 0) >= 1
        assert list(records) == [writer.peer_id]
    finally:
        for d in (a_dht, w_dht, r_dht):
            d.shutdown()


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
    from onebyte.settings import train_fields
    from onebyte.zo import apply_round, contribution_seed

    _, _, replica = build(TrainConfig(**train_fields(manifest), progress=False))
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
            rows.append(
                {
                    "round": q,
                    "n": n,
                    "attacker_codes": len(mine),
                    "max_move": moved,
                    "bound": len(mine) * lr * codec.max_value / n,
                    "per_contribution_bound": lr * codec.max_value / n,
                }
            )
        replica.apply(contribs)
    return rows, replica.sha256()


def identity_key(path: Path) -> str:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "onebyte.cli", "identity", "--identity", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.long
def test_private_run_with_an_extreme_member_and_an_outsider(tmp_path):
    """A private run of three members, one of which (x) always sends the largest byte against its
    estimate, and an outsider (o) that follows the run and publishes too. x is bounded by
    K * lr * g_max / n in every round and flagged; o's records are never applied (not_allowed);
    everyone, o included, ends with one weight hash."""
    run, rounds, k = "private6", 12, 8
    members = {n: identity_key(tmp_path / f"{n}.pem") for n in "abx"}
    allow = tmp_path / "allowed.txt"
    allow.write_text("# the run's members\n" + "".join(f"{key}  # {n}\n" for n, key in members.items()))
    with Swarm(tmp_path, in_process=True) as swarm:
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
        swarm.peer("b", *common, *WAIT, "--identity", str(tmp_path / "b.pem"), "--shard", "1/4")
        swarm.peer(
            "x",
            *common,
            *WAIT,
            "--identity",
            str(tmp_path / "x.pem"),
            "--shard",
            "2/4",
            launcher=("-m", "tests.adversaries.hostile_peer", "extreme", "against"),
        )
        swarm.peer("o", *common, *WAIT, "--identity", str(tmp_path / "o.pem"), "--shard", "3/4")
        swarm.wait_waiting("b", "x", "o")
        swarm.peer(
            "a",
            *common,
            "--identity",
            str(tmp_path / "a.pem"),
            "--new-run",
            "--start-delay",
            START,
            *TINY,
            "--round-seconds",
            "3",
            "--contribs-per-round",
            str(k),
            "--hash-every",
            "2",
            "--allowed-peers",
            str(allow),
            "--checkpoint-dir",
            str(tmp_path / "a.ck"),
        )
        for name in "abxo":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "abxo"}
        history = seed_log(tmp_path / "a.ck")
        logs = {n: swarm.log(n) for n in "xo"}
    assert "HOSTILE PEER: extreme against" in logs["x"]
    assert reports["a"]["manifest"]["allowed_peers"] == sorted(members.values())
    assert {n: reports[n]["peer_id"] for n in "abx"} == members
    x = members["x"]
    # one agreed history, the outsider's copy included
    assert len({r["final_sha256"] for r in reports.values()}) == 1, {
        n: r["final_sha256"][:12] for n, r in reports.items()
    }
    assert all(r["hash_mismatches"] == 0 and r["last_round"] == rounds - 1 for r in reports.values())

    # the outsider followed the run and published, and none of it counted
    assert "is private and this peer's key is not on its list" in logs["o"]
    assert reports["o"]["contributions_published"] > 0
    published = sum(reports[n]["contributions_published"] for n in "abx")
    for n, r in reports.items():
        assert r["rejected"].get("not_allowed", 0) >= 1, (n, r["rejected"])
        if (
            r["rounds_applied"] == rounds
        ):  # a peer that fell behind and caught up by log did not read those rounds' records itself
            assert r["contributions_applied_local"] + r["contributions_applied_remote"] == published, n
    assert reports["o"]["contributions_applied_local"] == 0
    assert {pk for recs in history.values() for pk, _ in recs} <= set(members.values())

    # the extreme member: every code it sent is the largest magnitude, 0x7f or 0xff ...
    x_codes = [b for recs in history.values() for pk, c in recs if pk == x for b in bytes.fromhex(c)]
    assert len(x_codes) >= 32 and set(x_codes) <= {0x7F, 0xFF}, x_codes[:10]
    # ... detected: the other members flag it, and nobody else, in their reports ...
    for n in "ab":
        sus = reports[n]["suspects"]
        assert set(sus) == {x}, (n, sus)
        assert sus[x]["reason"] == "saturated codes" and sus[x]["saturated_share"] == 1.0, sus
    # ... and bounded: in every round it moved no weight by more than K * lr * g_max / n, and it did reach that
    rows, replayed = attacker_share(history, reports["a"]["manifest"], x)
    assert replayed == reports["a"]["final_sha256"]  # the seed log is the history the swarm applied
    assert rows and all(r["attacker_codes"] <= k for r in rows)
    for r in rows:
        assert r["max_move"] <= r["bound"] * (1 + 1e-5), r
        assert r["max_move"] >= 0.99 * r["bound"], r  # (some weight sees all its codes' z agree)
    record(
        "private_run_extreme_member",
        contribs_per_round=k,
        lr=reports["a"]["manifest"]["lr"],
        g_max=215.2694854736328,
        rounds=rows,
        attacker_share_of_round=[r["attacker_codes"] / r["n"] for r in rows],
        reached_bound_every_round=all(r["max_move"] >= 0.99 * r["bound"] for r in rows),
        suspects={n: reports[n]["suspects"] for n in "ab"},
        attacker=x,
        outsider_published=reports["o"]["contributions_published"],
        members_published=published,
        not_allowed={n: r["rejected"].get("not_allowed", 0) for n, r in reports.items()},
        distinct_final_hashes=len({r["final_sha256"] for r in reports.values()}),
    )


def test_outsiders_cannot_vote_in_a_private_runs_hash_agreement(tmp_path):
    """Three outsider keys publish one fake hash for every hash round of a two-member private run:
    they outnumber the members, but only members vote (§12), so nobody disagrees or repairs."""
    from onebyte.dht.records import HashRecord, hash_key

    run, rounds = "private6h", 10
    listed = {n: identity_key(tmp_path / f"{n}.pem") for n in "ab"}
    allow = tmp_path / "allowed.txt"
    allow.write_text("".join(k + "\n" for k in listed.values()))
    with Swarm(tmp_path, in_process=True) as swarm:
        common = ["--run-id", run, "--rounds", str(rounds), "--batch-size", "4", "--threads", "1"]
        swarm.peer("b", *common, *WAIT, "--identity", str(tmp_path / "b.pem"), "--shard", "1/2")
        swarm.wait_waiting("b")
        swarm.peer(
            "a",
            *common,
            "--identity",
            str(tmp_path / "a.pem"),
            "--new-run",
            "--start-delay",
            START,
            *TINY,
            "--round-seconds",
            "2",
            "--contribs-per-round",
            "2",
            "--hash-every",
            "2",
            "--allowed-peers",
            str(allow),
        )
        swarm.wait_for_round("a", 0, timeout=180)
        _, dht, client, m, clock, _ = attach(swarm, run, 2)
        try:
            fake = "0" * 64
            sybils = [Identity() for _ in range(3)]
            faked = [q for q in range(clock.round_at(time.time()) + 1, rounds) if q % m.hash_every == 0]
            for q in faked:
                value = SER.dumps(HashRecord(round=q, sha256=fake, set_digest=fake, contributions=1).model_dump())
                for s in sybils:
                    assert all(
                        store_raw(dht, hash_key(run, q), subkey_of(s), value, clock.close(q) + 3600, sign_with=s)
                    )
            swarm.wait_for_round("a", faked[0] + 1, timeout=120)
            votes = client.read_hashes(run, faked[0])  # what the members read: 3 fake votes and theirs
            assert {s.peer_id for s in sybils} <= set(votes) and sum(1 for h in votes.values() if h.sha256 == fake) == 3
        finally:
            dht.shutdown()
        for name in "ab":
            assert swarm.wait(name, timeout=300) == 0, swarm.log(name)[-3000:]
        reports = {n: swarm.report(n) for n in "ab"}
    record(
        "outsider_hash_votes",
        outsiders=3,
        members=2,
        fake_hash_rounds=faked,
        peers={
            n: {k: r[k] for k in ("hash_mismatches", "hash_agreements", "repairs", "repairs_failed")}
            for n, r in reports.items()
        },
        distinct_final_hashes=len({r["final_sha256"] for r in reports.values()}),
    )
    assert reports["a"]["final_sha256"] == reports["b"]["final_sha256"]
    for n, r in reports.items():
        assert r["hash_mismatches"] == 0 and r["repairs"] == 0 and r["repairs_failed"] == 0, (
            n,
            r["hash_mismatches"],
            r["repairs_failed"],
        )
        assert r["hash_agreements"] >= 1
