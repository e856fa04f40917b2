"""Shared helpers for the benchmarks in bench/ (not part of the onebyte package).

Every script: SmolLM2-135M (``smollm2-135m``) in fp32, 2 CPU threads, the drugreview task,
batch 16 x max_length 64 unless its flags say otherwise; medians over repetitions after a
warm-up; results as JSON under bench/results/. Timing is reported, never asserted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)


def add_common_args(p, *, batch: int = 16) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="fast smoke run (few repetitions)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/<name>.json)")


def build_default(args, **overrides):
    """(loaded, task, replica) through onebyte's own build()."""
    from onebyte.peer.train import TrainConfig, build

    cfg = TrainConfig(model=args.model, dtype=args.dtype, max_length=args.max_length,
                      batch_size=args.batch_size, progress=False, **overrides)
    return cfg, build(cfg)


def fixed_batch(task, batch_size: int, seed: int = 0):
    from onebyte.peer.train import batch_indices

    return task.train_batch(batch_indices(seed, "bench", 0, 0, task.num_train, batch_size))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def machine_info(threads: int) -> dict:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cpu": _cpu_name(),
        "loadavg_at_end": os.getloadavg(),
        "git_head": _git_head(),
    }


def _git_head() -> str | None:
    """The commit the measured code is at (plus '+dirty' if onebyte/ has local edits); read-only."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "onebyte"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_results(name: str, obj: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def table(rows: list[tuple], headers: tuple) -> str:
    cells = [tuple(str(c) for c in headers)] + [tuple(_fmt(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c != c:
            return "nan"
        if abs(c) >= 100:
            return f"{c:.0f}"
        if abs(c) >= 1:
            return f"{c:.3f}"
        return f"{c:.4g}"
    return str(c)
