"""Protocol v2: low-rank directions, their in-forward evaluation and the exact one-pass apply."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from onebyte.zo import ByteCodec, NoiseTable, contribution_seed, weights_sha256
from onebyte.zo.codec import Float32Codec
from onebyte.zo.directions import Directions, factor_offset, factor_offsets, factors, lowrank_direction
from onebyte.zo.exact import apply_round_exact, exact_rule
from onebyte.zo.noise import tensor_offset, tensor_offsets
from tests.unit.test_zo import named, tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def test_directions_field_parses_and_refuses_what_it_does_not_know():
    assert Directions.parse("dense") == Directions(0) and Directions.parse("lowrank:4").rank == 4
    assert Directions.parse("lowrank:1").protocol_version == 2 and Directions.parse("dense").protocol_version == 1
    for bad in ("lowrank", "lowrank:0", "lowrank:17", "sparse:2", "Dense", "lowrank:01"):
        with pytest.raises(ValueError, match="unknown directions"):
            Directions.parse(bad)


def test_factors_are_windows_at_their_own_offsets_and_z_is_their_product():
    t = NoiseTable(12, 0)
    seed = contribution_seed("r", "p", 0, 0)
    a, b = factors(t, seed, "w", (5, 7), 2)
    assert a.shape == (5, 2) and b.shape == (7, 2)
    for col in range(2):
        oa, ob = factor_offset(seed, "w", "a", col, 12), factor_offset(seed, "w", "b", col, 12)
        assert oa != ob
        assert torch.equal(a[:, col], t.signs[(torch.arange(5) + oa) % t.size])
        assert torch.equal(b[:, col], t.signs[(torch.arange(7) + ob) % t.size])
    z = lowrank_direction(t, seed, "w", (5, 7), 2)
    assert torch.equal(z, (a.float() @ b.float().t())) and set(z.unique().tolist()) <= {-2.0, 0.0, 2.0}


# --- exact apply -------------------------------------------------------------------------------


def reference_exact(params, contributions, lr, table, rank, wd=0.0, decay=()):
    """docs/PROTOCOL.md 16.4 with exact rationals: s exact, then fl64, fl32(fl64(c*s)), fl32 update."""
    n = len(contributions)
    c = -lr / n
    out = []
    for name, p in params:
        theta = p.detach().float().numpy().copy()
        if p.dim() == 2 and rank:
            z = [
                lowrank_direction(table, s, name, tuple(p.shape), rank).numpy().astype(np.int64)
                for s, _ in contributions
            ]
        else:
            z = [
                table.direction(s, name, p.numel()).numpy().astype(np.int64).reshape(p.shape) for s, _ in contributions
            ]
        s = np.zeros(p.shape, dtype=np.float64).reshape(-1)
        flat = [zk.reshape(-1) for zk in z]
        for i in range(s.size):
            s[i] = float(sum(Fraction(v) * int(zk[i]) for (_, v), zk in zip(contributions, flat)))
        d = (s.reshape(p.shape) * c).astype(np.float32)
        if wd and name in decay:
            theta = (theta * np.float32(1 - lr * wd)).astype(np.float32)
        out.append((name, torch.from_numpy((theta + d).astype(np.float32)).to(p.dtype)))
    return out


def _round(k: int, codec=ByteCodec(), seed=0):
    rng = np.random.default_rng(seed)
    return [(contribution_seed("r", f"p{i % 7}", 0, i), codec.decode(int(rng.integers(0, 256)))) for i in range(k)]


def _small_params(dtype):
    w = ((torch.arange(48, dtype=torch.float64) - 20) / 16).reshape(6, 8).to(dtype)
    return [("layer.bias", torch.linspace(-1, 1, 8, dtype=torch.float64).to(dtype)), ("layer.weight", w)]


def test_a_rounds_offsets_computed_together_equal_each_ones_definition():
    """A round's apply computes every seed's offsets at once (numpy); they are section 3's and 16.2's, seed by seed."""
    seeds = [contribution_seed("r", f"p{i}", 3, i) for i in range(40)] + [0, 1, 2**63, 2**64 - 1]
    table = NoiseTable(12, 0)
    for rank in (1, 3):
        want = [factor_offset(s, "layer.weight", f, col, 12) for f in ("a", "b") for s in seeds for col in range(rank)]
        got = torch.cat([factor_offsets(table, seeds, "layer.weight", f, rank) for f in ("a", "b")])
        assert got.tolist() == want
    assert tensor_offsets(seeds, "layer.bias", 25).tolist() == [tensor_offset(s, "layer.bias", 25) for s in seeds]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("grouped", [False, True], ids=["float64", "grouped"])
def test_exact_apply_equals_the_definition_with_rationals(dtype, rank, grouped):
    table = NoiseTable(12, 0)
    params = _small_params(dtype)
    contribs = _round(9)
    contribs[4] = (contribs[4][0], 0.0)  # a zero code: no term in the grouped route's plan
    decay = frozenset({"layer.weight"})
    want = reference_exact(params, contribs, 1e-2, table, rank, 0.1, decay)
    apply_round_exact(
        params, contribs, 1e-2, table, Directions(rank), exact_rule(ByteCodec()), 0.1, decay, grouped=grouped
    )
    for (name, got), (_, exp) in zip(params, want):
        assert torch.equal(got, exp), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_is_bitwise_the_same_for_any_chunking_blocking_and_order(dtype):
    """Exact sums: terms per exact product (7, 64, 2^14), rows per block, the order of the
    contributions and the route (float64 products, or mantissa-grouped float32 ones as a GPU
    runs them) change nothing; chunks shorter than the round go through int64."""
    table = NoiseTable(12, 0)  # smaller than the embedding: windows wrap
    contribs = _round(150, seed=1)
    rule = exact_rule(ByteCodec())
    hashes = set()
    for chunk, block, order, grouped in (
        (None, 1 << 18, 1, False),
        (7, 5000, -1, False),
        (64, 1 << 14, 1, False),
        (None, 1 << 18, -1, True),
        (7, 5000, 1, True),
    ):
        params = named(tiny_llama(dtype))
        decay = frozenset(n for n, p in params if p.dim() == 2)
        apply_round_exact(
            params,
            contribs[::order],
            1e-3,
            table,
            Directions(1),
            rule,
            0.1,
            decay,
            chunk=chunk,
            block_elems=block,
            grouped=grouped,
        )
        hashes.add(weights_sha256(params))
    assert len(hashes) == 1


@pytest.mark.parametrize("kind", ["random", "all-largest", "mixed-extremes", "with-zeros"])
def test_the_grouped_float32_route_gives_the_float64_routes_bits(kind):
    """PROTOCOL 16.4's fast route: terms grouped by the mantissa of v, float32 products whose partial
    sums stay integers <= 2^24, group totals scaled in float64. Bit for bit the float64 route's S,
    for rounds past one float64 chunk (2^14 terms) and codes at both ends of the codec."""
    from onebyte.zo.exact import exact_matmul, grouped_matmul

    codec, rule = ByteCodec(), exact_rule(ByteCodec())
    rng = np.random.default_rng(7)
    for k in (1, 63, 300, 17_000):
        codes = {
            "random": rng.integers(0, 256, k),
            "all-largest": np.full(k, 255),
            "with-zeros": rng.integers(0, 256, k),
            "mixed-extremes": rng.choice([0, 1, 127, 128, 254, 255], k),
        }[kind]
        vals = torch.tensor([codec.decode(int(c)) for c in codes], dtype=torch.float64)
        if kind == "with-zeros":
            vals[::3] = 0.0
        a = torch.from_numpy(rng.choice([-1.0, 1.0], (9, k)))
        bt = torch.from_numpy(rng.choice([-1.0, 1.0], (k, 11)))
        want = exact_matmul(a * vals, bt, rule)
        assert torch.equal(exact_matmul(a, bt, rule, coef=vals, grouped=True), want), (kind, k)
        assert torch.equal(exact_matmul(a.float(), bt.float(), rule, coef=vals, chunk=100, grouped=True), want), (
            kind,
            k,
        )
        assert torch.equal(grouped_matmul(a, vals, bt, rule), want)  # past 2^14 terms: slices added as int64
        exact = sum(
            Fraction(float(v)) * int(x) * int(y) for v, x, y in zip(vals[:50], a[0, :50], bt[:50, 0])
        )  # an exact spot check
        assert float(exact_matmul(a[:1, :50], bt[:50, :1], rule, coef=vals[:50], grouped=True)) == float(exact)


def test_float32_codec_follows_the_sequential_rule():
    """The float32 baseline has no exact bound: s = fl64(s + v_k z_k) in canonical order."""
    table = NoiseTable(12, 0)
    codec = Float32Codec()
    contribs = [
        (contribution_seed("r", "p", 0, i), float(np.float32(g)))
        for i, g in enumerate([1e-30, 3.7, -2.5e7, 0.1, 1e20, -1e20])
    ]
    params = _small_params(torch.float32)
    apply_round_exact(params, contribs, 1e-2, table, Directions(2), exact_rule(codec), block_elems=16)
    c = -1e-2 / len(contribs)
    for name, got in params:
        theta = _small_params(torch.float32)[[n for n, _ in params].index(name)][1].numpy()
        s = np.zeros(theta.shape)
        for seed, v in contribs:
            if theta.ndim == 2:
                a, b = factors(table, seed, name, theta.shape, 2)
                for col in range(2):
                    s = s + v * np.outer(a[:, col].numpy(), b[:, col].numpy())
            else:
                s = s + v * table.direction(seed, name, theta.size).numpy()
        assert np.array_equal(got.numpy(), (theta + (s * c).astype(np.float32)).astype(np.float32)), name


def test_codecs_without_an_exact_bound_are_refused_for_low_rank_runs():
    assert exact_rule(ByteCodec()).chunk == 1 << 14
    with pytest.raises(ValueError, match="steps per octave"):
        exact_rule(ByteCodec(-8, 2))


def test_a_round_over_the_exact_sums_terms_is_refused_whole_before_any_weight_changes():
    """§16.4: more than 2^(63 - bits) terms (contributions x rank) is outside version 2: refused
    with one error before any tensor changes. log8:-40:7 spans 42 bits, so 2^21 terms: 131,073
    contributions of rank 16 are one too many, 131,072 of rank 16 would fit."""
    rule = exact_rule(ByteCodec(-40, 7))
    assert (rule.bits, rule.max_terms) == (42, 1 << 21)
    params = named(tiny_llama(torch.float32))
    before = weights_sha256(params)
    too_many = [(k, 1.0) for k in range((1 << 21) // 16 + 1)]
    with pytest.raises(ValueError, match="terms is more than protocol version 2's exact sum holds"):
        apply_round_exact(params, too_many, 1e-3, NoiseTable(12, 0), Directions(16), rule)
    assert weights_sha256(params) == before


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("init", [0.0, -0.0])
def test_an_exactly_zero_sum_leaves_every_element_as_it_was_signed_zeros_included(rank, init):
    """§16.4: an exactly zero sum is +0, so D = fl32(fl64(c * +0)) = -0 and t + D = t: weights of
    +0 and -0 keep their sign, whether the round is one contribution of rank 1 (the one-pass
    route) or several, and whatever sign the zero codes carry."""
    for vals in ([-0.0], [0.0], [-0.0, 0.0]):
        params = [("b", torch.full((8,), init)), ("w", torch.full((4, 8), init))]
        cs = [(contribution_seed("z", "p", 0, i), v) for i, v in enumerate(vals)]
        apply_round_exact(params, cs, 0.01, NoiseTable(12, 0), Directions(rank), exact_rule(ByteCodec()))
        for name, t in params:
            assert torch.equal(torch.signbit(t), torch.full_like(t, init).signbit()), (name, vals)
            assert not t.any(), (name, vals)


_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from onebyte.zo import ByteCodec, NoiseTable, weights_sha256
from onebyte.zo.directions import Directions
from onebyte.zo.exact import apply_round_exact, exact_rule
from onebyte.zo.noise import tensor_offset, tensor_offsets
from tests.unit.test_zo import named, tiny_llama
from tests.unit.test_lowrank_apply import _round
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    params = named(tiny_llama(dtype))
    apply_round_exact(
        params, _round(60, seed=3), 1e-3, NoiseTable(12, 0), Directions(2), exact_rule(ByteCodec()),
        block_elems=1 << 12,
    )
    print(weights_sha256(params))
"""


def test_apply_is_the_same_in_other_processes_with_one_and_two_threads():
    outs = set()
    for threads in (1, 2):
        r = subprocess.run(
            [sys.executable, "-c", _CHILD.format(root=str(ROOT), threads=threads)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        outs.add(r.stdout)
    here = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        params = named(tiny_llama(dtype))
        apply_round_exact(params, _round(60, seed=3), 1e-3, NoiseTable(12, 0), Directions(2), exact_rule(ByteCodec()))
        here.append(weights_sha256(params))
    assert outs == {"\n".join(here) + "\n"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_single_rank_one_contribution_is_one_pass_with_the_same_bits(dtype):
    """n = 1, r = 1: fl32(fl64(c * v a b^T)) = fl32(fl64(c v)) a b^T, applied as one outer-product add."""
    table = NoiseTable(12, 0)
    for k, wd in ((0, 0.0), (1, 0.1), (2, 0.1)):
        params = _small_params(dtype)
        contribs = _round(1, seed=10 + k)
        decay = frozenset({"layer.weight"})
        want = reference_exact(params, contribs, 1e-2, table, 1, wd, decay)
        apply_round_exact(
            params, contribs, 1e-2, table, Directions(1), exact_rule(ByteCodec()), wd, decay, block_elems=16
        )
        for (name, got), (_, exp) in zip(params, want):
            assert torch.equal(got, exp), (name, k)


def test_code_matches_the_documented_v2_vectors():
    import json
    import re

    from onebyte.spec.vectors import compute_v2_vectors

    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    m = re.search(r"<!-- vectors-v2:begin -->\s*```json\n(.*?)```\s*<!-- vectors-v2:end -->", text, re.S)
    assert m, "docs/PROTOCOL.md has no v2 vectors block"
    doc, code = json.loads(m.group(1)), compute_v2_vectors()
    assert set(doc) == set(code)
    for key in doc:
        assert doc[key] == code[key], key
    # the rule of the default codec as the text states it: q = 2^-31, 39 bits, 2^14 exact terms
    assert doc["exact_rule_log8:-8:8"] == {"quantum_log2": -31, "bits": 39, "terms_per_float64_sum": 16384}
