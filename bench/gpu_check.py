"""What bench/gpu_check.sh runs after the CUDA tests: one JSON with

* hashes: the same rounds applied on the CPU and on the GPU, protocol v1 (dense), v2
  (lowrank:1) and v3 (Adam on both, Nesterov on dense), float32 and bfloat16, through
  Replica.apply (what every peer runs); equal or not;
* timings on the GPU (SmolLM2-135M's architecture, built from its config: no download), batch
  16 x 64: one forward over the same rows, a v1 and a v2 step (estimate + apply of 1), applying
  n = 1, 8, 64, 512, 4096 contributions in multiples of one weight copy (and v2's exact sum by
  its float64 and its mantissa-grouped float32 route apart), and contributions per second with
  population batching (P directions per forward, P = 1, 4, 16, 64).

Needs no network and no dataset: random token ids stand in for a batch (timing and agreement do
not depend on the data). ``--device cpu --small`` runs the same code on a CPU as a smoke test.

    python bench/gpu_check.py --out bench/results/gpu_check.json [--pytest pytest_output.txt]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from harness import ROOT, write_results


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def lm_loss(model, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy; calls the model exactly once (what in-forward batching needs)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch.labels[:, 1:].reshape(-1)
    )


def build_model(small: bool, dtype: torch.dtype, device: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    if small:
        cfg = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
    else:  # SmolLM2-135M
        cfg = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            rope_theta=100000.0,
        )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype).to(device).eval()


def replica(model, directions: str, lr: float = 1e-4, optimizer: str = "sgd"):
    from onebyte.peer.replica import Replica

    params = sorted(model.named_parameters())  # tied tensors appear once
    return Replica(
        model, params, lr=lr, eps=1e-3, weight_decay=0.01, table_log2=22, directions=directions, optimizer=optimizer
    )


def rounds_of(n_rounds: int, per_round: int):
    from onebyte.zo import ByteCodec, contribution_seed

    codec = ByteCodec()
    return [
        [
            (contribution_seed("gpu-check", f"p{k % 7}", r, k // 7), codec.decode((53 * r + 17 * k + 5) % 256))
            for k in range(per_round)
        ]
        for r in range(n_rounds)
    ]


def check_hashes(device: str, small: bool) -> dict:
    out = {}
    rounds = (
        rounds_of(12, 24) + rounds_of(1, 1) + rounds_of(1, 100)
    )  # 100 terms: a GPU sums them by the grouped float32 route
    # v1, v2, and v3's stateful rules (the hash covers their state)
    cases = [("dense", "sgd"), ("lowrank:1", "sgd"), ("dense", "adam"), ("lowrank:1", "adam"), ("dense", "nesterov")]
    for directions, optimizer in cases:
        for dname, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            hashes = {}
            for dev in ("cpu", device):
                rep = replica(build_model(small, dtype, dev), directions, optimizer=optimizer)
                for contribs in rounds:
                    rep.apply(contribs)
                hashes[dev] = rep.sha256()
            name = directions if optimizer == "sgd" else f"{directions}+{optimizer}"
            out[f"{name}/{dname}"] = {
                "cpu": hashes["cpu"],
                device: hashes[device],
                "equal": hashes["cpu"] == hashes[device],
            }
            print(f"hash {name} {dname}: {'equal' if hashes['cpu'] == hashes[device] else 'DIFFER'}", flush=True)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, device: str, reps: int = 3) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def timings(device: str, small: bool, batch_size: int, length: int) -> dict:
    from onebyte.peer.replica import _concat
    from onebyte.zo import contribution_seed

    torch.set_grad_enabled(False)
    model = build_model(small, torch.float32, device)
    v1, v2 = replica(model, "dense", lr=1e-7), replica(model, "lowrank:1", lr=1e-7)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def batch(rows: int) -> Batch:
        ids = torch.randint(0, vocab, (rows, length), generator=gen).to(device)
        return Batch(ids, torch.ones_like(ids), ids)

    b = batch(batch_size)
    both = _concat([b, b])
    out = {"batch": [batch_size, length], "trainable_parameters": sum(p.numel() for _, p in v1.params)}
    out["forward_same_rows_s"] = _best(lambda: float(lm_loss(model, both)), device)
    seed = contribution_seed("gpu-check", "p", 0, 0)
    out["v1_step_s"] = _best(lambda: v1.apply([(seed, v1.estimate_on(seed, b, lm_loss)[0] * 0 + 1.0)]), device)
    out["v2_step_s"] = _best(lambda: v2.apply([(seed, v2.estimate_on(seed, b, lm_loss)[0] * 0 + 1.0)]), device)
    out["v1_step_over_forward"] = out["v1_step_s"] / out["forward_same_rows_s"]
    out["v2_step_over_forward"] = out["v2_step_s"] / out["forward_same_rows_s"]
    bufs = [torch.empty_like(p) for _, p in v1.params]
    out["copy_s"] = _best(lambda: [q.copy_(p) for (_, p), q in zip(v1.params, bufs)], device)
    apply = {"v1": {}, "v2": {}}
    for n in (1, 8, 64, 512, 4096):
        cs = rounds_of(1, n)[0]
        if n <= 64:
            apply["v1"][n] = _best(lambda: v1.apply(cs), device, 2) / out["copy_s"]
        apply["v2"][n] = _best(lambda: v2.apply(cs), device, 2 if n <= 512 else 1) / out["copy_s"]
        print(f"apply n={n}: v1 {apply['v1'].get(n, float('nan')):.2f}, v2 {apply['v2'][n]:.2f} copies", flush=True)
    out["apply_over_copy"] = apply
    # the exact sum's two routes (docs/PROTOCOL.md 16.4): float64 products against mantissa-grouped float32
    # ones (the default on a GPU from 64 terms); same bits, timed apart
    from onebyte.zo.exact import apply_round_exact

    routes = {}
    for n in (512, 4096):
        cs = rounds_of(1, n)[0]
        for name, grouped in (("float64", False), ("grouped_float32", True)):

            def run(cs=cs, grouped=grouped):
                apply_round_exact(
                    v2.params,
                    cs,
                    v2.lr,
                    v2.noise,
                    v2.directions,
                    v2.exact_rule,
                    v2.weight_decay,
                    v2.decay,
                    grouped=grouped,
                )

            routes.setdefault(name, {})[n] = _best(run, device, 1) / out["copy_s"]
        print(
            f"apply n={n} by route: float64 {routes['float64'][n]:.2f}, grouped float32 "
            f"{routes['grouped_float32'][n]:.2f} copies",
            flush=True,
        )
    out["apply_routes_over_copy"] = routes
    pop = {}
    for P in (1, 4, 16, 64):
        seeds = [contribution_seed("gpu-check", "p", 1, k) for k in range(P)]
        batches = [batch(batch_size) for _ in range(P)]
        try:
            t = _best(lambda: v2.estimate_many(seeds, batches, lm_loss), device, 2)
        except torch.OutOfMemoryError:
            break
        pop[P] = {"seconds": t, "contributions_per_s": P / t}
        print(f"population P={P}: {P / t:.1f} contributions/s", flush=True)
    out["v2_population"] = pop
    out["v1_contributions_per_s"] = 1 / _best(lambda: v1.estimate_on(seed, b, lm_loss), device, 2)
    per_v2 = apply["v2"][4096] / 4096 * out["copy_s"]
    best_pop = max(pop.values(), key=lambda x: x["contributions_per_s"]) if pop else None
    if best_pop:
        out["crossing_N_v2"] = (1 / best_pop["contributions_per_s"]) / per_v2
    out["crossing_N_v1"] = (1 / out["v1_contributions_per_s"]) / (apply["v1"][64] / 64 * out["copy_s"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--small", action="store_true", help="a tiny model instead of SmolLM2-135M's architecture (smoke test)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    p.add_argument("--pytest", default=None, help="pytest output to include (the CUDA tests)")
    args = p.parse_args()
    t0 = time.time()
    res = {
        "benchmark": "gpu_check",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor(),
        "config": vars(args),
    }
    if args.pytest and Path(args.pytest).exists():
        res["cuda_tests_tail"] = Path(args.pytest).read_text()[-2000:]
    res["hashes"] = check_hashes(args.device, args.small)
    res["all_hashes_equal"] = all(v["equal"] for v in res["hashes"].values())
    res["timings"] = timings(args.device, args.small, args.batch_size, args.length)
    res["seconds"] = time.time() - t0
    write_results("gpu_check", res, args.out)
    print(
        f"wrote {args.out} ({res['seconds']:.0f} s); CPU and {args.device} hashes "
        f"{'all equal' if res['all_hashes_equal'] else 'DIFFER'}"
    )


if __name__ == "__main__":
    main()
