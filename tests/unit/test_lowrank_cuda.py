"""Protocol v2 on CUDA: the exact apply gives the CPU's bits; the in-forward estimate matches."""

from __future__ import annotations

import pytest
import torch

from onebyte.zo import ByteCodec, NoiseTable, contribution_seed, weights_sha256
from onebyte.zo.directions import Directions
from onebyte.zo.exact import apply_round_exact, exact_rule
from onebyte.zo.lowrank import InForward
from tests.unit.test_zo import named, tiny_llama

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device on this machine; run `pytest -m cuda` on a GPU host"
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("grouped", [None, False, True], ids=["default", "float64", "grouped-tf32"])
def test_cpu_and_cuda_apply_v2_rounds_to_the_same_bits(dtype, rank, grouped):
    """The CPU sums by float64 products; CUDA by its default (mantissa-grouped TF32/float32 products
    from 64 terms, PROTOCOL 16.4), or by either route forced: the same bits, a round of 150 included."""
    codec = ByteCodec()
    rounds = [
        [
            (contribution_seed("gpu", f"p{p}", r, i), codec.decode((53 * r + 17 * p + 5 * i) % 256))
            for p in range(5)
            for i in range(7)
        ]
        for r in range(4)
    ] + [[(contribution_seed("gpu", "solo", 9, 0), codec.decode(0x45))]]
    rounds.append(
        [(contribution_seed("gpu", f"p{i % 9}", 10, i), codec.decode((29 * i + 3) % 256)) for i in range(150)]
    )
    hashes = {}
    for device in ("cpu", "cuda"):
        params = named(tiny_llama(dtype).to(device))
        noise = NoiseTable(20, 0, device)
        decay = frozenset(n for n, p in params if p.dim() >= 2)
        for contribs in rounds:
            apply_round_exact(
                params,
                contribs,
                1e-3,
                noise,
                Directions(rank),
                exact_rule(codec),
                0.01,
                decay,
                chunk=16 if len(contribs) < 64 else None,
                grouped=grouped if device == "cuda" else False,
            )
        hashes[device] = weights_sha256(params)
    assert hashes["cpu"] == hashes["cuda"]


def test_cuda_in_forward_losses_match_cpu_closely():
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    seeds = [contribution_seed("gpu", "p", 0, k) for k in range(3)]
    losses = {}
    for device in ("cpu", "cuda"):
        model = tiny_llama().to(device)
        params = named(model)
        before = weights_sha256(params)
        x = ids.to(device).repeat(6, 1)  # 3 directions x 2 signs x 2 rows
        with torch.no_grad(), InForward(model, params, NoiseTable(20, 0, device), Directions(1))(seeds, 2, 1e-2):
            logits = model(input_ids=x).logits.float()
        losses[device] = (
            torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1), reduction="none")
            .view(12, -1)
            .mean(1)
            .cpu()
        )
        assert weights_sha256(params) == before
    assert torch.allclose(losses["cpu"], losses["cuda"], rtol=1e-3, atol=1e-4)
