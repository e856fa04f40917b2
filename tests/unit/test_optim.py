"""Protocol v3: the stateful update rules (Nesterov, Adam), bit for bit (docs/PROTOCOL.md §17).

The reference below computes every operation with exact rationals and rounds each result once,
so it shares no arithmetic with the implementation: if they agree on every bit, the
implementation is the specified sequence of correctly rounded operations.
"""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from onebyte.coordinator_free.manifest import RunManifest, unsupported_reason
from onebyte.peer.checkpoint import load_checkpoint, save_checkpoint
from onebyte.peer.replica import Replica
from onebyte.zo import ByteCodec, NoiseTable, contribution_seed
from onebyte.zo.directions import Directions, lowrank_direction
from onebyte.zo.exact import apply_round_exact, exact_rule
from onebyte.zo.optim import OptimizerSpec, StatefulRule, beta_power, f32, protocol_version

ROOT = Path(__file__).resolve().parents[2]
CODEC = ByteCodec()


# --- exact rationals ---------------------------------------------------------------------------


def rnd(x: Fraction, p: int, emin: int) -> Fraction:
    """x rounded to the nearest binary float with p significand bits (ties to even), subnormals below 2^emin."""
    if x == 0:
        return Fraction(0)
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    q = Fraction(2) ** (max(e, emin) - p + 1)
    return math.copysign(1, x) * round(a / q) * q  # round() of a Fraction: half to even


def r32(x) -> Fraction:
    return rnd(Fraction(x), 24, -126)


def r64(x) -> Fraction:
    return rnd(Fraction(x), 53, -1022)


def rbf16(x) -> Fraction:
    return rnd(Fraction(x), 8, -126)


def sqrt32(x: Fraction) -> Fraction:
    """The correctly rounded binary32 square root of a binary32 x >= 0."""
    if x == 0:
        return Fraction(0)
    lo = r32(Fraction(math.sqrt(x)))  # a guess within an ulp or two, then decide exactly
    ulp = Fraction(2) ** (max(math.frexp(float(lo))[1] - 1, -126) - 23)
    cands = [lo - ulp, lo, lo + ulp]
    return min(cands, key=lambda c: (abs(c * c - x), c / ulp % 2))  # nearest (squares are monotone here)


def adam_ref(theta, m, v, g, t, spec: OptimizerSpec, d=None, dtype="float32"):
    b1, b2, eps, lr = map(Fraction, (spec.beta1, spec.beta2, spec.eps, spec.lr))
    c1, c2 = r32(1 - b1), r32(1 - b2)
    p1, p2 = Fraction(1), Fraction(1)
    for _ in range(t):
        p1, p2 = r64(p1 * b1), r64(p2 * b2)
    r1, r2 = r32(1 / r32(1 - p1)), r32(1 / r32(1 - p2))
    m = r32(r32(b1 * m) + r32(c1 * g))
    v = r32(r32(b2 * v) + r32(c2 * r32(g * g)))
    den = r32(sqrt32(r32(v * r2)) + eps)
    u = r32(r32(m * r1) / den)
    th = r32(theta)
    if d is not None:
        th = r32(th * Fraction(d))
    th = r32(th - r32(lr * u))
    return (th if dtype == "float32" else rbf16(th)), m, v


def nesterov_ref(theta, b, g, spec: OptimizerSpec, d=None, dtype="float32"):
    beta, lr = Fraction(spec.beta1), Fraction(spec.lr)
    b = r32(r32(beta * b) + g)
    u = r32(g + r32(beta * b))
    th = r32(theta)
    if d is not None:
        th = r32(th * Fraction(d))
    th = r32(th - r32(lr * u))
    return (th if dtype == "float32" else rbf16(th)), b


def f32_bits(x: float) -> str:
    return struct.pack(">f", x).hex()


# --- the arithmetic ----------------------------------------------------------------------------


def test_the_rounded_binary64_square_root_and_quotient_are_correctly_rounded_binary32():
    rng = random.Random(0)
    xs = [rng.uniform(1, 2) * 2.0 ** rng.randint(-149, 126) for _ in range(3000)]
    xs += [2.0**-149, 2.0**-126, 3.4e38, 1.0, 2.0, 0.0]  # subnormals, the extremes
    x = torch.tensor(xs, dtype=torch.float32)
    ours = x.to(torch.float64).sqrt().to(torch.float32)
    for xi, oi in zip(x.tolist(), ours.tolist()):
        assert Fraction(oi) == sqrt32(Fraction(xi)), xi
    y = torch.tensor([rng.uniform(0.5, 2) * 2.0 ** rng.randint(-60, 60) for _ in range(len(xs))], dtype=torch.float32)
    q = (x.to(torch.float64) / y.to(torch.float64)).to(torch.float32)
    checked = 0
    for xi, yi, qi in zip(x.tolist(), y.tolist(), q.tolist()):
        if 2.0**-100 < abs(qi) < 2.0**100:  # (the reference does not model overflow)
            assert Fraction(qi) == r32(Fraction(xi) / Fraction(yi))
            checked += 1
    assert checked > 1000


def test_beta_powers_are_repeated_binary64_products():
    assert beta_power(f32(0.9), 3) == f32(0.9) * f32(0.9) * f32(0.9)
    assert beta_power(0.5, 2000) == 0.0 and beta_power(0.9, 0) == 1.0


def test_constants_enter_the_rule_as_binary32():
    spec = OptimizerSpec.of("adam", 0.1, 0.9, 0.99, 1e-8)
    assert [f32_bits(x) for x in (spec.lr, spec.beta1, spec.beta2, spec.eps)] == [
        "3dcccccd",
        "3f666666",
        "3f7d70a4",
        "322bcc77",
    ]
    with pytest.raises(ValueError, match="unknown optimizer"):
        OptimizerSpec.of("lion", 0.1)
    assert OptimizerSpec.of("nesterov", 0.3).slots == ("momentum",)


# --- the rule against the rational reference ---------------------------------------------------


def small_replica(optimizer, dtype=torch.float32, directions="dense", wd=0.0, lr=0.05, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).to(dtype)
    return Replica(
        model,
        list(model.named_parameters()),
        lr=lr,
        eps=1e-3,
        weight_decay=wd,
        table_log2=12,
        directions=directions,
        optimizer=optimizer,
        **kw,
    )


def random_round(rng: random.Random, r: int, n: int) -> list[tuple[int, float]]:
    out = []
    for k in range(n):
        code = CODEC.encode(rng.choice([-1, 1]) * 10 ** rng.uniform(-2, 1.5))
        out.append((contribution_seed("vectors", f"p{k % 3}", r, k), CODEC.decode(code)))
    return out


def exact_sums(rep: Replica, name: str, p: torch.Tensor, contributions) -> list[Fraction]:
    sums = [Fraction(0)] * p.numel()
    for seed, v in contributions:
        if rep.directions.is_lowrank(p):
            z = lowrank_direction(rep.noise, seed, name, tuple(p.shape), rep.directions.rank).reshape(-1)
        else:
            z = rep.noise.direction(seed, name, p.numel())
        for e, ze in enumerate(z.tolist()):
            sums[e] += Fraction(v) * int(ze)
    return sums


@pytest.mark.parametrize("optimizer", ["adam", "nesterov"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("directions", ["dense", "lowrank:2"])
def test_every_bit_matches_the_rational_reference(optimizer, dtype, directions):
    rep = small_replica(optimizer, dtype, directions, wd=0.1)
    spec = rep.optimizer
    d = f32(1.0 - spec.lr * 0.1)
    ref = {name: [Fraction(x) for x in p.detach().float().reshape(-1).tolist()] for name, p in rep.params}
    state = {name: [[Fraction(0)] * p.numel() for _ in spec.slots] for name, p in rep.params}
    rng, t = random.Random(1), 0
    for r, n in enumerate([3, 0, 1, 5, 2]):  # an empty round changes nothing, t included
        contributions = random_round(rng, r, n)
        sums = {name: exact_sums(rep, name, p, contributions) for name, p in rep.params}
        rep.apply(contributions)
        if not n:
            continue
        t += 1
        for name, p in rep.params:
            dec = d if name in rep.decay else None
            for e in range(p.numel()):
                g = r32(r64(r64(sums[name][e]) * r64(Fraction(1, n))))
                st = state[name]
                if optimizer == "adam":
                    ref[name][e], st[0][e], st[1][e] = adam_ref(
                        ref[name][e], st[0][e], st[1][e], g, t, spec, dec, str(dtype)[6:]
                    )
                else:
                    ref[name][e], st[0][e] = nesterov_ref(ref[name][e], st[0][e], g, spec, dec, str(dtype)[6:])
        for name, p in rep.params:
            assert [Fraction(x) for x in p.detach().float().reshape(-1).tolist()] == ref[name], (name, r)
            for slot, want in zip(spec.slots, state[name]):
                got = rep.rule.state[(slot, name)].reshape(-1).tolist()
                assert [Fraction(x) for x in got] == want, (slot, name, r)
    assert int(rep.rule.step) == t == 4


# --- the same bits whatever the order, blocking, route, threads or process -----------------------


def rounds_hash(optimizer, dtype, directions, rounds, *, shuffle=False, block_elems=None, grouped=None, chunk=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 256), torch.nn.LayerNorm(256)).to(dtype)
    rep = Replica(
        model,
        list(model.named_parameters()),
        lr=0.01,
        eps=1e-3,
        weight_decay=0.01,
        table_log2=16,
        directions=directions,
        optimizer=optimizer,
    )
    rng = random.Random(2)
    kw = {k: v for k, v in dict(block_elems=block_elems, grouped=grouped, chunk=chunk).items() if v is not None}
    for r in range(rounds):
        contributions = random_round(rng, r, 1 + r % 7)
        if shuffle:
            random.Random(r).shuffle(contributions)
        rep.rule.begin(len(contributions))
        apply_round_exact(
            rep.params, contributions, rep.lr, rep.noise, rep.directions, rep.exact_rule, step=rep.rule.sink, **kw
        )
        rep.rule.end()
    return rep.sha256()


@pytest.mark.parametrize("directions", ["dense", "lowrank:4"])
def test_order_blocking_route_and_chunks_change_no_bit(directions):
    base = rounds_hash("adam", torch.float32, directions, 12)
    assert rounds_hash("adam", torch.float32, directions, 12, shuffle=True) == base
    assert rounds_hash("adam", torch.float32, directions, 12, block_elems=1000) == base
    assert rounds_hash("adam", torch.float32, directions, 12, chunk=2) == base
    if directions != "dense":
        assert rounds_hash("adam", torch.float32, directions, 12, grouped=True) == base
        assert rounds_hash("adam", torch.float32, directions, 12, grouped=False) == base


_CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from tests.unit.test_optim import rounds_hash
print(rounds_hash(sys.argv[2], getattr(torch, sys.argv[3]), sys.argv[4], 100))
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_100_rounds_agree_across_threads_and_processes(dtype):
    here = {}
    for optimizer, directions in (("adam", "lowrank:4"), ("nesterov", "dense")):
        torch.set_num_threads(1)
        try:
            here[optimizer] = rounds_hash(optimizer, getattr(torch, dtype), directions, 100)
        finally:
            torch.set_num_threads(2)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, "2", optimizer, dtype, directions],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == here[optimizer], (optimizer, dtype)


# --- the state is part of the replica ----------------------------------------------------------


def test_the_hash_covers_the_state_and_a_checkpoint_carries_it(tmp_path):
    a, b = small_replica("adam"), small_replica("adam")
    rng = random.Random(3)
    for r in range(3):
        a.apply(random_round(rng, r, 4))
    with torch.no_grad():
        for (_, pa), (_, pb) in zip(a.params, b.params):
            pb.copy_(pa)  # the same weights, but b has no history
    assert [n for n, _ in a.state_tensors()][-1] == "optim/step"
    assert a.sha256() != b.sha256()
    info = save_checkpoint(tmp_path / "c.safetensors", a.state_tensors(), 2)
    assert info.sha256 == a.sha256()
    c = small_replica("adam")
    load_checkpoint(tmp_path / "c.safetensors", c.state_tensors())
    assert c.sha256() == a.sha256() and int(c.rule.step) == 3
    more = random_round(rng, 3, 2)
    a.apply(more)
    c.apply(more)  # the state came with it: the next round gives the same bits
    assert c.sha256() == a.sha256()


def test_a_stateless_replica_hashes_its_weights_as_before():
    rep = small_replica("sgd")
    assert rep.rule is None and rep.state_tensors() == rep.params and rep.protocol_version == 1
    assert small_replica("sgd", directions="lowrank:1").protocol_version == 2
    assert (
        small_replica("adam").protocol_version
        == 3
        == small_replica("nesterov", directions="lowrank:1").protocol_version
    )


def test_state_is_refused_for_sgd():
    with pytest.raises(ValueError, match="no state"):
        StatefulRule(OptimizerSpec.of("sgd", 0.1), [])


# --- the manifest ------------------------------------------------------------------------------


def manifest(**kw) -> dict:
    base = dict(
        run_id="r",
        created_at=1.0,
        start_time=2.0,
        round_seconds=10.0,
        publish_margin=1.0,
        settle_seconds=3.0,
        hash_every=6,
        model="tiny-llama",
        initial_sha256="0" * 64,
        dataset="mr",
        max_length=32,
        lr=0.1,
        eps=1e-3,
        weight_decay=0.0,
        table_log2=20,
        contribs_per_round=4,
    )
    return base | kw


def test_the_version_follows_the_optimizer_and_sgd_manifests_keep_their_wire_form():
    assert protocol_version("dense", "adam") == 3 and protocol_version("lowrank:2", "sgd") == 2
    v1 = RunManifest(**manifest())
    assert "optimizer" not in v1.record() and "beta1" not in v1.record()
    v3 = RunManifest(**manifest(protocol_version=3, optimizer="adam", beta2=0.999))
    assert v3.record()["optimizer"] == "adam" and v3.record()["beta2"] == 0.999
    assert RunManifest(**v3.record()) == v3
    with pytest.raises(ValueError, match="protocol version 3, not 1"):
        RunManifest(**manifest(optimizer="nesterov"))
    with pytest.raises(ValueError, match="protocol version 1, not 3"):
        RunManifest(**manifest(protocol_version=3))


def test_a_peer_refuses_an_optimizer_it_does_not_know():
    assert unsupported_reason(manifest(protocol_version=3, optimizer="adam")) is None
    assert unsupported_reason(manifest(protocol_version=3, optimizer="lion")) == "optimizer 'lion' (protocol version 3)"


def test_directions_keep_their_meaning_under_v3():
    assert Directions.parse("lowrank:2").protocol_version == 2  # the family alone; the optimizer adds v3
    assert exact_rule(ByteCodec()).bits == 39
    assert NoiseTable(12).size == 4096


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine; run `pytest -m cuda` on a GPU host"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("optimizer,directions", [("adam", "dense"), ("adam", "lowrank:2"), ("nesterov", "dense")])
def test_cpu_and_cuda_apply_v3_rounds_to_the_same_bits(dtype, optimizer, directions):
    hashes = []
    for device in ("cpu", "cuda"):
        rep = small_replica(optimizer, dtype, directions, wd=0.1)
        rep = Replica(
            rep.model.to(device),
            list(rep.model.named_parameters()),
            lr=0.05,
            eps=1e-3,
            weight_decay=0.1,
            table_log2=12,
            directions=directions,
            optimizer=optimizer,
        )
        rng = random.Random(5)
        for r in range(30):
            rep.apply(random_round(rng, r, [3, 0, 1, 70][r % 4]))  # 70 terms: a GPU's grouped route
        hashes.append(rep.sha256())
    assert hashes[0] == hashes[1]


def test_export_of_a_v3_checkpoint_installs_the_weights_and_leaves_the_state_out(tmp_path):
    import json

    from onebyte.peer.export import from_checkpoint
    from onebyte.peer.train import TrainConfig, build

    cfg = TrainConfig(model="tiny-llama", dataset="drugreview", max_length=16, table_log2=16, optimizer="adam", lr=1e-3)
    _, _, rep = build(cfg)
    initial = rep.sha256()
    rep.apply(random_round(random.Random(7), 0, 3))
    save_checkpoint(tmp_path / "ckpt-000000000.safetensors", rep.state_tensors(), 0, {"initial_sha256": initial})
    fields = manifest(
        protocol_version=3, optimizer="adam", model="tiny-llama", dataset="drugreview", initial_sha256=initial
    )
    fields |= {"lr": 1e-3, "table_log2": 16, "max_length": 16}
    (tmp_path / "manifest.json").write_text(json.dumps({"manifest": fields}))
    trained = from_checkpoint(tmp_path)
    assert trained.info["sha256"] == rep.sha256() and trained.info["round"] == 0
    got = dict(trained.loaded.model.named_parameters(remove_duplicate=False))
    assert all(torch.equal(got[name], t) for name, t in rep.params)  # the weights are installed
    assert not any(name.startswith("optim/") for name in trained.loaded.model.state_dict())
