"""Many peers in one process: what a round costs at N = 100 and 1,000 volunteers (docs/SCALING.md).

Part 1, records (no network, cheap): for N peers with K codes each, build every peer's real
signed round record exactly as a peer stores it (``ContributionRecord.pack()`` -> msgpack, the
Ed25519 signature over ``signed_message`` appended by ``Ed25519OwnerValidator.sign_value``, the
subkey ``msgpack(b"ob1" + public key)``), put the N records into one hivemind
``DictionaryDHTValue`` under the round key as a DHT node stores them, and measure:
  - one record (value + subkey) in bytes: what a peer writes per round;
  - the whole round dictionary as hivemind serializes it in a FIND reply: what one read returns;
  - time to verify the N signatures and to parse + decide the round (``parse_subkeys``,
    ``decide_round``) on this CPU.
Part 2, apply (CPU-heavy): ``apply_round`` (onebyte's fused update rule) with n contributions of
random g on real trainable tensors: tiny-llama (all parameters) and SmolLM2-135M subsets
(``layers.0.``, ``layers.[0-3].``), n from 1 to 10,000; seconds per contribution per million
parameters, extrapolated linearly (memory-bandwidth bound, checked on two subset sizes) to all
134.5 M parameters.

    python bench/scaling_sim.py [--threads 2] [--skip-apply] [--ns 1,100,1000,10000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from _common import add_common_args, setup_torch

from harness import machine_info, results_path, write_results


def records_part(ns: list[int], ks: list[int]) -> list[dict]:
    from hivemind.dht.routing import DHTID
    from hivemind.dht.storage import DictionaryDHTValue
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils import MSGPackSerializer as ser

    from onebyte.coordinator_free.agreement import decide_round
    from onebyte.dht.identity import Identity, verify
    from onebyte.dht.records import MAX_VALUE_BYTES, ContributionRecord, parse_subkeys, round_key
    from onebyte.dht.validator import Ed25519OwnerValidator, owner_subkey, signed_message
    from onebyte.zo import make_codec

    codec = make_codec("log8:-8:8")
    run_id = "scaling"
    key = round_key(run_id, 12345)
    key_id = DHTID.generate(source=key).to_bytes()
    out = []
    idents = [Identity() for _ in range(max(ns))]
    validators = [Ed25519OwnerValidator(i) for i in idents]
    now = time.time()
    for n in ns:
        for k in ks:
            rng = random.Random(n * 1000 + k)
            d = DictionaryDHTValue()
            signed_records = []
            value_sizes, subkey_sizes = [], []
            t0 = time.perf_counter()
            for i in range(n):
                rec = ContributionRecord(
                    round=12345, published_at=now, codes=bytes(rng.randrange(256) for _ in range(k))
                )
                subkey = ser.dumps(owner_subkey(idents[i].public_key))
                record = DHTRecord(key_id, subkey, ser.dumps(rec.pack()), now + 600)
                value = validators[i].sign_value(record)
                signed_records.append(DHTRecord(key_id, subkey, value, now + 600))
                value_sizes.append(len(value))
                subkey_sizes.append(len(subkey))
                d.store(subkey, value, now + 600)
            sign_s = time.perf_counter() - t0
            whole = ser.dumps(d)  # what a FIND reply carries for this key (plus protobuf framing)
            t0 = time.perf_counter()
            ok = 0
            for r in signed_records:
                ok += verify(
                    ser.loads(r.subkey)[3:],
                    r.value[-64:],
                    signed_message(DHTRecord(r.key, r.subkey, r.value[:-64], r.expiration_time)),
                )
            verify_s = time.perf_counter() - t0
            assert ok == n
            # what a reader gets after stripping signatures: {subkey: value} -> parse -> decide
            stripped = {ser.loads(r.subkey): ser.loads(r.value[:-64]) for r in signed_records}
            t0 = time.perf_counter()
            from collections import Counter

            reasons = Counter()
            parsed = parse_subkeys(stripped, ContributionRecord.unpack, reasons)
            rs = decide_round(run_id, 12345, parsed, close_time=now + 1, contribs_per_round=k, codec=codec)
            decide_s = time.perf_counter() - t0
            assert len(rs.contributions) == n * k and not reasons
            row = {
                "peers": n,
                "codes_per_record": k,
                "contributions_per_round": n * k,
                "record_value_bytes": statistics.mean(value_sizes),
                "subkey_bytes": statistics.mean(subkey_sizes),
                "record_bytes": statistics.mean(value_sizes) + statistics.mean(subkey_sizes),
                "round_dict_bytes": len(whole),
                "round_dict_bytes_per_contribution": len(whole) / (n * k),
                "max_value_bytes_onebyte": MAX_VALUE_BYTES,
                "record_fits_onebyte_limit": max(value_sizes) <= MAX_VALUE_BYTES,
                "sign_seconds_all": sign_s,
                "verify_seconds_all": verify_s,
                "verify_seconds_per_record": verify_s / n,
                "parse_and_decide_seconds": decide_s,
            }
            print(
                f"N={n:5d} K={k:4d}: record {row['record_bytes']:.0f} B, round dict {len(whole):,} B "
                f"({row['round_dict_bytes_per_contribution']:.1f} B/contribution); verify {verify_s * 1e3:.0f} ms, "
                f"parse+decide {decide_s * 1e3:.0f} ms",
                flush=True,
            )
            out.append(row)
    return out


def apply_part(ns: list[int], reps: int) -> list[dict]:
    from onebyte.tasks.loaded_model import trainable_parameters
    from onebyte.tasks.loading import load_model
    from onebyte.zo import NoiseTable, apply_round

    noise = NoiseTable(25, 0, torch.device("cpu"))
    out = []
    sets = [("tiny-llama", None), ("smollm2-135m", r"layers\.0\."), ("smollm2-135m", r"layers\.[0-3]\.")]
    loaded = {}
    for model, regex in sets:
        if model not in loaded:
            loaded[model] = load_model(model, dtype="float32", device="cpu")
        params = sorted(trainable_parameters(loaded[model].model, regex), key=lambda kv: kv[0])
        numel = sum(t.numel() for _, t in params)
        rng = random.Random(0)
        for n in ns:
            contributions = [(rng.getrandbits(64), rng.uniform(-10, 10)) for _ in range(n)]
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                apply_round(params, contributions, 1e-9, noise)
                times.append(time.perf_counter() - t0)
            s = min(times)
            row = {
                "model": model,
                "trainable": regex,
                "trainable_parameters": numel,
                "tensors": len(params),
                "n": n,
                "seconds": times,
                "seconds_min": s,
                "seconds_per_contribution": s / n,
                "seconds_per_contribution_per_mparam": s / n / (numel / 1e6),
            }
            print(
                f"{model} {regex or 'all'} ({numel / 1e6:.2f} M params, {len(params)} tensors) n={n:6d}: {s:.3f} s "
                f"({s / n * 1e3:.3f} ms/contribution, {row['seconds_per_contribution_per_mparam'] * 1e6:.1f} "
                "us/contribution/Mparam)",
                flush=True,
            )
            out.append(row)
            if s > 60:
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--peers", default="10,100,1000")
    p.add_argument("--codes", default="1,8,64,256")
    p.add_argument("--ns", default="1,100,1000,10000")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--skip-apply", action="store_true")
    p.add_argument("--skip-records", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.peers, args.codes, args.ns, args.reps = "10,100", "1,64", "1,100", 1
    setup_torch(args.threads)
    import json

    path = results_path("scaling_sim", args.out)
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update({"benchmark": "scaling_sim", "config": vars(args)})
    if not args.skip_records:
        result["records"] = records_part(
            [int(x) for x in args.peers.split(",")], [int(x) for x in args.codes.split(",")]
        )
        write_results("scaling_sim", result, args.out)
    if not args.skip_apply:
        result["apply"] = apply_part([int(x) for x in args.ns.split(",")], args.reps)
    result["machine"] = machine_info(args.threads)
    write_results("scaling_sim", result, args.out)


if __name__ == "__main__":
    main()
