"""Test vectors for docs/PROTOCOL.md: ``python -m onebyte.spec.vectors`` prints them as JSON.

tests/unit/test_protocol_vectors.py checks that the JSON block in docs/PROTOCOL.md equals this output,
so the specification and the code cannot drift apart silently. ``--v2`` prints protocol v2's
vectors (section 16.6), which tests/unit/test_lowrank_apply.py checks against their own block;
``--v3`` protocol v3's (section 17.5), checked by tests/unit/test_protocol_vectors.py; ``--admission``
section 15's admission by seniority.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch

from onebyte.zo.codec import ByteCodec
from onebyte.zo.hashing import weights_sha256
from onebyte.zo.noise import NoiseTable, contribution_seed, mix64, name_key, tensor_offset
from onebyte.zo.update import apply_round

VECTOR_TABLE_LOG2 = 12


def vector_tensors(dtype: torch.dtype = torch.float32) -> list[tuple[str, torch.Tensor]]:
    """The documented tiny model: w[i] = (i - 16) / 16 for i < 32 as (4, 8), and b = zeros(8)."""
    w = ((torch.arange(32, dtype=torch.float64) - 16) / 16).reshape(4, 8).to(dtype)
    return [("layer.bias", torch.zeros(8, dtype=dtype)), ("layer.weight", w)]


VECTOR_ROUNDS = [
    # (lr, weight_decay, [(peer, round, index, byte)]) applied in this order, decay on layer.weight
    (0.01, 0.0, [("peer-a", 0, 0, 0x41), ("peer-a", 0, 1, 0xC5), ("peer-b", 0, 0, 0x7F)]),
    (0.01, 0.1, [("peer-b", 1, 0, 0x90)]),
]


def compute_vectors() -> dict:
    codec = ByteCodec()
    table = NoiseTable(VECTOR_TABLE_LOG2, 0)
    big = NoiseTable(25, 0)
    seed = contribution_seed("vectors", "peer-a", 0, 0)
    out: dict = {
        "splitmix64_seed0_first3": [f"{mix64((i + 1) * 0x9E3779B97F4A7C15):016x}" for i in range(3)],
        "table_key0_first64": "".join("+" if s > 0 else "-" for s in big.signs[:64].tolist()),
        "table_key0_log2_25_sum": int(big.signs.sum().item()),
        "seed_vectors_peer-a_0_0": f"{seed:016x}",
        "seed_vectors_peer-b_7_3": f"{contribution_seed('vectors', 'peer-b', 7, 3):016x}",
        "name_key_layer.weight": f"{name_key('layer.weight'):016x}",
        "offset_seed_layer.weight_log2_25": tensor_offset(seed, "layer.weight", 25),
        "z_seed_layer.weight_log2_25_first16": "".join(
            "+" if s > 0 else "-" for s in big.direction(seed, "layer.weight", 16).tolist()
        ),
        "codec": codec.name,
        "codec_magnitudes_float32le_sha256": hashlib.sha256(
            np.asarray(codec.magnitudes, dtype="<f4").tobytes()
        ).hexdigest(),
        "codec_decode_hex": {
            f"0x{b:02x}": float(codec.decode(b)).hex() for b in (0x00, 0x01, 0x02, 0x08, 0x41, 0x7F, 0x80, 0xC5, 0xFF)
        },
        "codec_encode": {repr(g): codec.encode(g) for g in (0.0, 0.001, 0.002, 0.0039, 1.0, -1.0, 1.05, 300.0, -1e9)},
    }
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        params = vector_tensors(dtype)
        hashes = [weights_sha256(params)]
        for lr, wd, contribs in VECTOR_ROUNDS:
            round_ = [(contribution_seed("vectors", p, r, i), codec.decode(b)) for p, r, i, b in contribs]
            apply_round(params, round_, lr, table, wd, frozenset({"layer.weight"}))
            hashes.append(weights_sha256(params))
        out[f"update_{name}"] = {
            "sha256_after_each_round": hashes,
            "weight_row0_hex": [float(x).hex() for x in params[1][1][0].tolist()],
        }
    return out


V2_DIRECTIONS = "lowrank:2"
# the float32 codec's values for section 13's rounds (fl32 of these), in the same order
V2_FLOAT32_CODEC_VALUES = [[0.1, -1.7, 3300.0], [-0.0123]]


def compute_v2_vectors() -> dict:
    """Protocol v2: factor offsets, a low-rank z, the exact rule of the default codec and the
    update vectors of section 13's rounds applied with lowrank:2 (v1's tensors, table, codec) in
    binary32, bfloat16 and binary16, and with the float32 codec's values (V2_FLOAT32_CODEC_VALUES)."""
    from onebyte.zo.directions import Directions, factor_offset, lowrank_direction
    from onebyte.zo.exact import apply_round_exact, exact_rule

    codec = ByteCodec()
    table = NoiseTable(VECTOR_TABLE_LOG2, 0)
    directions = Directions.parse(V2_DIRECTIONS)
    rule = exact_rule(codec)
    seed = contribution_seed("vectors", "peer-a", 0, 0)
    z = lowrank_direction(table, seed, "layer.weight", (4, 8), directions.rank)
    out: dict = {
        "directions": directions.name,
        "factor_offset_seed_layer.weight_a_0_log2_25": factor_offset(seed, "layer.weight", "a", 0, 25),
        "factor_offset_seed_layer.weight_b_1_log2_25": factor_offset(seed, "layer.weight", "b", 1, 25),
        "z_seed_layer.weight_4x8_lowrank2_log2_12_rows": [" ".join(str(int(x)) for x in row) for row in z.tolist()],
        "exact_rule_log8:-8:8": {
            "quantum_log2": rule.quantum_log2,
            "bits": rule.bits,
            "terms_per_float64_sum": rule.chunk,
        },
    }
    float32_codec = [  # the float32 codec: the same rounds' seeds with these binary32 values (sequential rule)
        [float(np.float32(g)) for g in vals] for vals in V2_FLOAT32_CODEC_VALUES
    ]
    for name, dtype in (
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("float32_codec", torch.float32),
    ):
        params = vector_tensors(dtype)
        hashes = [weights_sha256(params)]
        for (lr, wd, contribs), f32 in zip(VECTOR_ROUNDS, float32_codec, strict=True):
            round_ = [(contribution_seed("vectors", p, r, i), codec.decode(b)) for p, r, i, b in contribs]
            if name == "float32_codec":
                round_ = [(s, g) for (s, _), g in zip(round_, f32, strict=True)]
            r_rule = None if name == "float32_codec" else rule
            apply_round_exact(params, round_, lr, table, directions, r_rule, wd, frozenset({"layer.weight"}))
            hashes.append(weights_sha256(params))
        out[f"update_{name}"] = {
            "sha256_after_each_round": hashes,
            "weight_row0_hex": [float(x).hex() for x in params[1][1][0].tolist()],
            "bias_hex": [float(x).hex() for x in params[0][1].tolist()],
        }
    return out


V3_WEIGHT_DECAY = 0.1  # a run setting under v3 (one value for every round), on layer.weight


def compute_v3_vectors() -> dict:
    """Protocol v3 (section 17.5): section 13's rounds, with an empty round between them, through each
    stateful rule with its default constants, lr 0.01 and wd 0.1: the hash of weights and state after
    each round, then layer.weight's first row, layer.bias's state and t."""
    import struct

    from onebyte.zo.directions import Directions
    from onebyte.zo.exact import apply_round_exact, exact_rule
    from onebyte.zo.optim import OptimizerSpec, StatefulRule, beta_power

    codec = ByteCodec()
    table = NoiseTable(VECTOR_TABLE_LOG2, 0)
    rule = exact_rule(codec)
    adam = OptimizerSpec.of("adam", 0.01)
    out: dict = {
        "binary32_bits": {
            k: struct.pack(">f", v).hex()
            for k, v in (("lr", adam.lr), ("beta1", adam.beta1), ("beta2", adam.beta2), ("optim_eps", adam.eps))
        },
        "beta2_power_t3_hex": beta_power(adam.beta2, 3).hex(),
    }
    rounds = [VECTOR_ROUNDS[0][2], [], VECTOR_ROUNDS[1][2]]
    for optimizer, directions, dtype in (
        ("adam", "dense", torch.float32),
        ("adam", "dense", torch.bfloat16),
        ("nesterov", "dense", torch.float32),
        ("adam", V2_DIRECTIONS, torch.float32),
    ):
        params = vector_tensors(dtype)
        d = Directions.parse(directions)
        state = StatefulRule(OptimizerSpec.of(optimizer, 0.01), params, V3_WEIGHT_DECAY, {"layer.weight"})
        hashes = [weights_sha256([*params, *state.tensors()])]
        for contribs in rounds:
            round_ = [(contribution_seed("vectors", p, r, i), codec.decode(b)) for p, r, i, b in contribs]
            if round_:
                state.begin(len(round_))
                apply_round_exact(params, round_, 0.01, table, d, rule, step=state.sink)
                state.end()
            hashes.append(weights_sha256([*params, *state.tensors()]))
        out[f"{optimizer}_{directions}_{str(dtype).removeprefix('torch.')}"] = {
            "sha256_after_each_round": hashes,
            "weight_row0_hex": [float(x).hex() for x in params[1][1][0].tolist()],
            "bias_state_hex": {
                name.split("/")[1]: [float(x).hex() for x in t.tolist()]
                for name, t in state.tensors()
                if name.endswith("/layer.bias")
            },
            "step": int(state.step),
        }
    return out


def compute_admission_vectors() -> dict:
    """Section 15's round set in a run that admits by seniority: two logged rounds, then a flooded
    round decided from them. Keys are SHA-256("key-<i>") in hex; codes as hex."""
    from onebyte.coordinator_free.agreement import RobustRule, cap_rank, clip_limit, decide_round
    from onebyte.coordinator_free.seedlog import entry_line
    from onebyte.coordinator_free.seniority import SeniorityWindow, standing
    from onebyte.dht.records import ContributionRecord
    from onebyte.zo.codec import decode_codes

    codec = ByteCodec()
    rule = RobustRule(max_contributions=20, clip_abs=4.0, seniority_window=2, max_new_contributions=8)
    key = [hashlib.sha256(f"key-{i}".encode()).hexdigest() for i in range(8)]
    plain, top, big = bytes.fromhex("4149c145"), bytes.fromhex("7f7f7f7f"), bytes.fromhex("5a5a5a5a")
    # round 0: keys 0, 1 plain, key 2 saturated; round 1: keys 0, 1, 3 plain, key 2 saturated
    logged = {0: {key[0]: plain, key[1]: plain, key[2]: top}, 1: {key[0]: plain, key[1]: plain, key[2]: top}}
    logged[1][key[3]] = plain
    # round 2: the established keys, key 2 again, key 3 (one round of standing), and four new keys:
    # two saturated, one plain, one with |g| = 8 (held back by clip_abs 4)
    flood = {key[0]: plain, key[1]: plain, key[2]: top, key[3]: plain, key[4]: top, key[5]: top, key[6]: plain}
    flood[key[7]] = big
    lines, out = {}, {"rule": {"max_round_contributions": 20, "clip_abs": 4.0, "seniority_window": 2}}
    out["rule"]["max_new_contributions"] = 8
    out["keys"] = key
    for q, recs in logged.items():
        rs = decide_round(
            "vectors",
            q,
            {p: ContributionRecord(round=q, published_at=0.0, codes=c) for p, c in recs.items()},
            close_time=1.0,
            contribs_per_round=4,
            codec=codec,
            rule=rule,
            seniority=SeniorityWindow(rule, codec).at(q, lines.get)[0],
        )
        lines[q] = entry_line(q, rs.digest, rs.records)
        out[f"round{q}"] = {
            "records": {p: c.hex() for p, c in recs.items()},
            "kept": [p for p, _ in rs.records],
            "set_digest": rs.digest,
            "in_good_standing": sorted(standing(lines[q], codec, rule)),
        }
    seniority, _ = SeniorityWindow(rule, codec).at(2, lines.get)
    rs = decide_round(
        "vectors",
        2,
        {p: ContributionRecord(round=2, published_at=0.0, codes=c) for p, c in flood.items()},
        close_time=1.0,
        contribs_per_round=4,
        codec=codec,
        rule=rule,
        seniority=seniority,
    )
    out["round2"] = {
        "records": {p: c.hex() for p, c in flood.items()},
        "seniority": dict(sorted(seniority.items())),
        "cap_rank": {p: cap_rank(2, p).hex() for p in flood},
        "kept": [p for p, _ in rs.records],
        "rejected": dict(sorted(rs.rejected.items())),
        "clip_limit": clip_limit([v for _, c in rs.records for v in decode_codes(c, codec)], rule),
        "set_digest": rs.digest,
    }
    return out


if __name__ == "__main__":
    which = {"--v2": compute_v2_vectors, "--v3": compute_v3_vectors, "--admission": compute_admission_vectors}
    print(json.dumps(next((f for a, f in which.items() if a in sys.argv[1:]), compute_vectors)(), indent=2))
