"""Single-peer training through the real CLI (`onebyte train` in a child process), on tiny
config-built models. Through the public API, in-process: tests/unit/test_train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onebyte.cli", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_same_seed_same_hash_across_processes_and_other_seed_differs(tmp_path):
    hashes = []
    for seed in (3, 3, 4):
        r = cli(
            "train",
            "--model",
            "tiny-llama",
            "--steps",
            "5",
            "--lr",
            "1e-3",
            "--batch-size",
            "8",
            "--eval-size",
            "16",
            "--seed",
            str(seed),
            "--no-progress",
            "--table-log2",
            "20",
            "--report",
            str(tmp_path / f"{seed}.json"),
        )
        assert r.returncode == 0, r.stderr
        hashes.append(json.loads((tmp_path / f"{seed}.json").read_text())["final_sha256"])
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--steps", "0"], "--steps"),
        (["--eps", "abc"], "--eps"),
        (["--codec", "log9:1:1"], "unknown codec"),
        (["--dataset", "/nonexistent/file.csv"], "nonexistent"),
        (["--model", "/nonexistent/model-folder"], "nonexistent"),
        (["--trainable", "no_such_param_xyz"], "no_such_param_xyz"),
    ],
)
def test_bad_input_gives_one_clear_line_not_a_traceback(args, message):
    base = ["train", "--model", "tiny-llama", "--steps", "1", "--eval-size", "8", "--no-progress"]
    r = cli(*base, *args, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_text_column_names_the_columns_that_exist(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("sentence,label\n" + "it was good,1\nit was bad,0\n" * 10)
    r = cli("train", "--model", "tiny-llama", "--dataset", str(f), "--steps", "1", "--no-progress")
    assert r.returncode == 2 and "sentence" in r.stderr and "Traceback" not in r.stderr
    r = cli(
        "train",
        "--model",
        "tiny-llama",
        "--dataset",
        str(f),
        "--text-column",
        "sentence",
        "--steps",
        "2",
        "--label-words",
        " bad, good",
        "--eval-size",
        "4",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
