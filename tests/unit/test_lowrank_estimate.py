"""Protocol v2's estimate: low-rank z evaluated inside the forward pass, rows carrying their own
(seed, sign), equals the copy-based estimate of the same z (tiny real models and the real task)."""

from __future__ import annotations

import pytest
import torch

from onebyte.peer.replica import Replica
from onebyte.peer.train import TrainConfig, batch_indices, build
from onebyte.zo import contribution_seed
from onebyte.zo.lowrank import InForward


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def built(request):
    cfg = TrainConfig(model=request.param, max_length=32, table_log2=16, progress=False)
    return build(cfg)


def _replica(built, dtype=None, directions="lowrank:2"):
    loaded, task, rep = built
    return Replica(rep.model, rep.params, lr=1e-3, eps=1e-2, table_log2=16, directions=directions), task


def test_in_forward_estimate_equals_the_copy_based_estimate_of_the_same_z(built):
    rep, task = _replica(built)
    kinds = {k for _, k, _ in rep.inforward.owners}
    assert rep.inforward.supported and {"linear", "embedding", "generic"} <= kinds  # tied head, norms
    seeds = [contribution_seed("t", "p", 0, k) for k in range(3)]
    # three directions on batches of different lengths, six row groups in one forward
    batches = [task.train_batch(batch_indices(0, "p", 0, k, task.num_train, 3)) for k in range(3)]
    before = rep.sha256()
    forwards = []
    handle = rep.model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        got = rep.estimate_many(seeds, batches, task.loss)
    finally:
        handle.remove()
    assert len(forwards) == 1 + 6  # one real forward, then six replays of its rows (no compute)
    want = [rep.estimate(s, lambda b=b: task.loss(rep.model, b)) for s, b in zip(seeds, batches)]
    for (g, lp, lm), (g2, lp2, lm2) in zip(got, want):
        assert lp == pytest.approx(lp2, abs=2e-5) and lm == pytest.approx(lm2, abs=2e-5)
        assert g == pytest.approx(g2, abs=5e-3)
        assert abs(g) > 1e-3  # the perturbation is felt: not a trivial equality of zeros
    assert rep.sha256() == before  # master weights never written


def test_one_direction_both_signs_in_one_forward_and_no_copy_of_a_matrix(built):
    rep, task = _replica(built, directions="lowrank:1")
    batch = task.train_batch(batch_indices(0, "p", 1, 0, task.num_train, 4))
    seed = contribution_seed("t", "p", 1, 0)
    copies = []
    import onebyte.zo.lowrank as lowrank_mod

    real = lowrank_mod.perturbed_copy

    def counting(theta, *a, **k):
        copies.append(theta.dim())
        return real(theta, *a, **k)

    lowrank_mod.perturbed_copy = counting
    try:
        g, lp, lm = rep.estimate_on(seed, batch, task.loss)
    finally:
        lowrank_mod.perturbed_copy = real
    assert copies and set(copies) == {1}  # only 1-D tensors (norms, biases) are ever copied
    g2, lp2, lm2 = rep.estimate(seed, lambda: task.loss(rep.model, batch))
    assert lp == pytest.approx(lp2, abs=2e-5) and lm == pytest.approx(lm2, abs=2e-5)


def test_a_module_that_is_not_row_wise_falls_back_to_copies():
    torch.manual_seed(0)

    class Mixer(torch.nn.Module):  # owns a tensor and mixes rows: cannot be evaluated per row
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.scale = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.lin(x).mean(0, keepdim=True) * self.scale

    model = Mixer()
    params = sorted(model.named_parameters())
    rep = Replica(model, params, lr=1e-3, eps=1e-2, table_log2=12, directions="lowrank:1")
    assert not rep.inforward.supported  # a module with a trainable tensor and children

    from dataclasses import dataclass

    @dataclass
    class B:
        x: torch.Tensor

        def __len__(self):
            return len(self.x)

    batch = B(torch.randn(3, 4))
    loss = lambda m, b: m(b.x).sum()  # noqa: E731
    g, lp, lm = rep.estimate_on(contribution_seed("t", "p", 0, 0), batch, loss)
    g2, _, _ = rep.estimate(contribution_seed("t", "p", 0, 0), lambda: loss(model, batch))
    assert g == g2


def test_in_forward_hooks_are_removed_after_the_estimate(built):
    rep, task = _replica(built)
    batch = task.train_batch(batch_indices(0, "p", 2, 0, task.num_train, 2))
    rep.estimate_on(contribution_seed("t", "p", 2, 0), batch, task.loss)
    assert all(not m._forward_hooks for m in rep.model.modules())
    assert isinstance(rep.inforward, InForward)
