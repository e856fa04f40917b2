"""The real `onebyte` command in a child process, and what a clean refusal looks like (exit code 2,
no traceback, one error line). Shared by tests/cli/, tests/adversaries/ and tests/swarm/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = [
    "--model",
    "tiny-llama",
    "--steps",
    "2",
    "--eval-size",
    "4",
    "--no-progress",
    "--table-log2",
    "20",
    "--max-length",
    "32",
]
TINY_PEER = [
    "--model",
    "tiny-llama",
    "--table-log2",
    "20",
    "--max-length",
    "32",
    "--lr",
    "1e-3",
    "--round-seconds",
    "2",
    "--contribs-per-round",
    "2",
    "--batch-size",
    "4",
    "--start-delay",
    "3",
    "--no-progress",
    "--threads",
    "1",
]


def onebyte(
    *args: str, launcher: tuple[str, ...] = ("-m", "onebyte.cli"), timeout: float = 240, env: dict | None = None
):
    return subprocess.run(
        [sys.executable, *launcher, "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=os.environ | (env or {}),
    )


def one_clear_error(r: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2, no traceback, exactly one error line, last, naming the problem."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], lines[-5:]
    assert message in lines[-1], lines[-1]
