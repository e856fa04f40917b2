"""The pure math: generator, codec, perturbation, update rule, hash."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from onebyte.zo import (
    ByteCodec,
    NoiseTable,
    Perturbation,
    apply_round,
    contribution_seed,
    perturbed_copy,
    spsa_estimate,
    weights_sha256,
)
from onebyte.zo.codec import Float32Codec, make_codec
from onebyte.zo.noise import mix64


def tiny_llama(dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def named(model) -> list[tuple[str, torch.Tensor]]:
    return sorted(model.named_parameters())  # named_parameters() already drops the tied duplicate


# --- generator ---------------------------------------------------------------------------------


def test_splitmix64_matches_the_published_reference_stream():
    # SplitMix64 (Steele, Lea, Flood 2014) seeded with 0: the widely published first output.
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_table_is_balanced_signs_and_deterministic():
    t = NoiseTable(20, 0)
    vals = t.signs
    assert vals.dtype == torch.int8 and set(vals.unique().tolist()) == {-1, 1}
    assert abs(vals.float().mean().item()) < 0.01
    assert torch.equal(vals, NoiseTable(20, 0).signs)
    assert not torch.equal(vals, NoiseTable(20, 1).signs)


def test_directions_differ_by_seed_and_tensor_and_are_nearly_orthogonal():
    t = NoiseTable(22, 0)
    s1, s2 = contribution_seed("r", "p", 0, 0), contribution_seed("r", "p", 0, 1)
    n = 200_000
    a, b, c = (t.direction(s, nm, n).float() for s, nm in ((s1, "w"), (s2, "w"), (s1, "v")))
    for x, y in ((a, b), (a, c)):
        assert abs(float(x @ y)) / n < 5 / math.sqrt(n)


def test_seed_depends_on_every_field():
    base = contribution_seed("run", "peer", 3, 1)
    others = {
        contribution_seed("run2", "peer", 3, 1),
        contribution_seed("run", "peer2", 3, 1),
        contribution_seed("run", "peer", 4, 1),
        contribution_seed("run", "peer", 3, 2),
        contribution_seed("runp", "eer", 3, 1),
    }  # length prefixes keep fields apart
    assert base not in others and len(others) == 5
    with pytest.raises(ValueError):
        contribution_seed("run", "peer", -1, 0)


def test_direction_wraps_around_a_small_table():
    t = NoiseTable(12, 0)
    n = 3 * t.size + 17
    flat = torch.zeros(n)
    out = perturbed_copy(flat, "x", 5, 1.0, t)
    expected = t.direction(5, "x", n).float()
    assert torch.equal(out, expected)


# --- perturbation and estimator ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plus_minus_evaluation_leaves_weights_bitwise_unchanged(dtype):
    model = tiny_llama(dtype)
    params = named(model)
    before = weights_sha256(params)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    pert = Perturbation(model, params, NoiseTable(16, 0))

    def loss():
        return model(input_ids=ids, labels=ids).loss

    base = float(loss().detach())
    for k in range(3):
        g, lp, lm = spsa_estimate(loss, pert, contribution_seed("r", "p", 0, k), 1e-2)
        assert math.isfinite(g) and lp != lm and lp != base
    assert weights_sha256(params) == before
    assert pert.unexercised() == []


def test_perturbed_forward_equals_forward_of_explicitly_perturbed_weights():
    model = tiny_llama()
    params = named(model)
    noise = NoiseTable(16, 0)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(2))
    seed, eps = 1234, 1e-2
    with torch.no_grad(), Perturbation(model, params, noise)(seed, eps):
        via_hooks = model(input_ids=ids).logits
    explicit = tiny_llama()
    with torch.no_grad():
        for name, p in named(explicit):
            p.copy_(perturbed_copy(p, name, seed, eps, noise))
        direct = explicit(input_ids=ids).logits
    assert torch.equal(via_hooks, direct)  # tied embedding perturbed for both of its uses


def test_a_forward_that_raises_still_restores_the_weights():
    model = tiny_llama()
    params = named(model)
    before = weights_sha256(params)
    pert = Perturbation(model, params, NoiseTable(16, 0))

    def boom(module, args, output):
        raise RuntimeError("boom")

    h = model.model.layers[1].mlp.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), pert(7, 0.1):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))
    h.remove()
    assert weights_sha256(params) == before


def test_spsa_estimate_correlates_with_the_true_directional_derivative():
    torch.manual_seed(0)
    lin = torch.nn.Linear(20, 1)
    x, y = torch.randn(64, 20), torch.randn(64, 1)
    params = named(lin)
    noise = NoiseTable(16, 0)
    pert = Perturbation(lin, params, noise)
    loss = lambda: torch.nn.functional.mse_loss(lin(x), y)  # noqa: E731
    lin.zero_grad()
    with torch.enable_grad():
        loss().backward()
    for seed in range(5):
        g, _, _ = spsa_estimate(loss, pert, seed, 1e-3)
        true = sum(float(p.grad.reshape(-1) @ noise.direction(seed, n, p.numel()).float()) for n, p in params)
        assert g == pytest.approx(true, rel=1e-2, abs=1e-3)


# --- codec -------------------------------------------------------------------------------------


def test_byte_codec_roundtrip_error_is_bounded_inside_the_range():
    c = ByteCodec()
    rng = np.random.default_rng(0)
    xs = np.exp(rng.uniform(math.log(c.min_value), math.log(c.max_value), 5000)) * rng.choice([-1, 1], 5000)
    bound = 2 ** (1 / (2 * c.steps_per_octave)) - 1
    for x in xs:
        b = c.encode(float(x))
        assert 0 <= b <= 255
        assert abs(c.decode(b) - x) / abs(x) <= bound + 1e-9
        assert math.copysign(1, c.decode(b)) == math.copysign(1, x)


def test_byte_codec_edges():
    c = ByteCodec()
    assert c.encode(float("nan")) is None and c.encode(float("inf")) is None and c.encode(-float("inf")) is None
    assert c.decode(c.encode(0.0)) == 0.0
    assert c.decode(c.encode(1e12)) == c.max_value and c.decode(c.encode(-1e12)) == -c.max_value
    assert c.decode(c.encode(c.min_value / 3)) == 0.0
    assert len({c.decode(b) for b in range(256)}) == 255  # 0x00 and 0x80 both mean zero
    for b in range(256):
        v = c.decode(b)
        assert float(np.float32(v)) == v
    with pytest.raises(ValueError):
        c.decode(256)
    with pytest.raises(ValueError):
        ByteCodec.parse("log9:1:2")
    assert make_codec("log8:-4:4") == ByteCodec(-4, 4)


def test_float32_codec_is_the_unquantized_baseline():
    c = Float32Codec()
    assert c.roundtrip(0.1) == float(np.float32(0.1))
    assert c.encode(float("nan")) is None and c.encode(1e300) is None


# --- update rule -------------------------------------------------------------------------------


def reference_update(params, contributions, lr, table: NoiseTable, wd=0.0, decay=()):
    """The update rule written straight from docs/PROTOCOL.md in numpy, one element at a time in spirit."""
    signs = table.signs.numpy()
    n = len(contributions)
    out = []
    for name, p in params:
        theta = p.detach().float().numpy().reshape(-1).copy()  # exact widening
        if wd and name in decay:
            theta = (theta * np.float32(1 - lr * wd)).astype(np.float32)
        delta = np.zeros_like(theta, dtype=np.float32)
        for seed, g in contributions:
            c = np.float32(-lr * g / n)
            idx = (np.arange(theta.size) + table.offset(seed, name)) % table.size
            delta = (delta + c * signs[idx].astype(np.float32)).astype(np.float32)
        new = (theta + delta).astype(np.float32)
        out.append((name, torch.from_numpy(new).to(p.dtype).reshape(p.shape)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 5])
def test_fused_update_equals_the_reference_definition(dtype, k):
    model = tiny_llama(dtype)
    params = named(model)
    table = NoiseTable(12, 0)  # smaller than the embedding: exercises wrap-around too
    table.chunk = 1000  # odd chunking must not change a bit
    codec = ByteCodec()
    rng = np.random.default_rng(k)
    contribs = [(contribution_seed("r", f"p{i}", 0, 0), codec.decode(int(rng.integers(0, 256)))) for i in range(k)]
    decay = frozenset(n for n, p in params if p.dim() >= 2)
    expected = reference_update(params, contribs, 1e-3, table, 0.1, decay)
    apply_round(params, contribs, 1e-3, table, 0.1, decay)
    for (name, got), (_, want) in zip(params, expected):
        assert torch.equal(
            got.view(-1).view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
            want.view(-1).view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
        ), name


def test_update_is_reproducible():
    table = NoiseTable(16, 0)
    contribs = [(contribution_seed("r", "a", 0, i), v) for i, v in enumerate([0.7, -3.2, 12.5, 0.01])]
    hashes = []
    for order in (contribs, contribs):
        m = tiny_llama()
        apply_round(named(m), order, 1e-2, table)
        hashes.append(weights_sha256(named(m)))
    assert hashes[0] == hashes[1]
    assert hashes[0] != weights_sha256(named(tiny_llama()))


def test_empty_round_changes_nothing():
    m = tiny_llama()
    h = weights_sha256(named(m))
    apply_round(named(m), [], 1.0, NoiseTable(12, 0), weight_decay=0.5, decay=frozenset(n for n, _ in named(m)))
    assert weights_sha256(named(m)) == h


_CHILD = r"""
import sys, torch
sys.path.insert(0, {root!r})
from tests.unit.test_zo import tiny_llama, named
from onebyte.zo import NoiseTable, apply_round, contribution_seed, weights_sha256, ByteCodec
m = tiny_llama()
c = ByteCodec()
t = NoiseTable(16, 0)
for r in range(3):
    apply_round(
        named(m), [(contribution_seed("x", "p", r, i), c.decode((37 * r + 11 * i) % 256)) for i in range(4)], 1e-3, t
    )
print(weights_sha256(named(m)))
"""


def test_cpu_determinism_across_processes():
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parents[2])
    outs = set()
    for threads in ("1", "2"):
        r = subprocess.run(
            [sys.executable, "-c", _CHILD.format(root=root)],
            capture_output=True,
            text=True,
            timeout=300,
            env={"OMP_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"},
            check=True,
        )
        outs.add(r.stdout.strip())
    assert len(outs) == 1 and len(next(iter(outs))) == 64


def test_hash_covers_names_dtypes_shapes_and_bits():
    a = [("w", torch.zeros(2, 3))]
    h = weights_sha256(a)
    assert h == weights_sha256([("w", torch.zeros(2, 3))])
    assert h != weights_sha256([("v", torch.zeros(2, 3))])
    assert h != weights_sha256([("w", torch.zeros(3, 2))])
    assert h != weights_sha256([("w", torch.zeros(2, 3, dtype=torch.float64))])
    assert h != weights_sha256([("w", torch.tensor([[0.0, 0, 0], [0, 0, -0.0]]))])  # -0.0 differs in bits
