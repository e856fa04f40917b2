"""`onebyte plot` on what a real demo run leaves behind: its report and the peers' round logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from tests.support.tools import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "onebyte.cli"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (path, img.shape)
    assert img.std() > 0.01, f"{path} is blank"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A real 2-peer demo on loopback (tiny-llama, 2 s rounds), each peer serving metrics on P+i."""
    workdir = tmp_path_factory.mktemp("demo")
    port = free_port()
    r = subprocess.run(
        [
            *CLI,
            "demo",
            "--peers",
            "2",
            "--rounds",
            "6",
            "--model",
            "tiny-llama",
            "--lr",
            "1e-3",
            "--trainable",  # the final norm: a frozen trunk, cached for the whole pool before a peer contributes
            r"^model\.norm\.weight$",
            "--max-examples",
            "64",
            "--table-log2",
            "20",
            "--max-length",
            "32",
            "--round-seconds",
            "2",
            "--contribs-per-round",
            "2",
            "--batch-size",
            "4",
            "--eval-size",
            "32",
            "--start-delay",
            "10",
            "--workdir",
            str(workdir),
            "--report",
            str(workdir / "report.json"),
            "--no-progress",
            "--metrics-port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for i in range(2):  # --metrics-port P gives peer i the port P + i
        log = (workdir / f"peer{i}.log").read_text()
        assert f":{port + i}/metrics" in log
        assert "trunk cached for 64 examples" in log, log[-2000:]
    return workdir


def test_plot_turns_a_demo_report_into_charts(demo_run, tmp_path):
    out = tmp_path / "plots"
    r = subprocess.run(
        [*CLI, "plot", str(demo_run / "report.json"), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    written = {Path(line).name for line in r.stdout.split()}
    assert {"loss.png", "accuracy.png", "contributions.png", "latency.png", "overview.png"} <= written, r.stdout
    for name in written:
        assert_png(out / name)
    # the report named its workdir: the charts hold both peers' round logs
    rounds = [
        [
            json.loads(line)["round"]
            for line in (demo_run / f"peer{i}.rounds.jsonl").read_text().splitlines()
            if json.loads(line).get("event") == "applied"
        ]
        for i in range(2)
    ]
    assert rounds[0] == [*range(6)] and rounds[1][-1] == 5, (
        rounds
    )  # a peer that joins late catches up, and may log less


def test_plot_reads_round_logs_and_wire_bytes_results(demo_run, tmp_path):
    from onebyte.metrics.plot import plot

    out = tmp_path / "plots"
    wire = ROOT / "bench" / "results" / "wire_bytes.json"
    inputs = [demo_run / "peer0.rounds.jsonl", demo_run / "peer1.rounds.jsonl"] + ([wire] if wire.exists() else [])
    written = {p.name for p in plot(inputs, out, title="two round logs")}
    assert {"loss.png", "contributions.png", "latency.png", "overview.png"} <= written
    assert "accuracy.png" not in written  # round logs alone hold no evaluation
    if wire.exists():
        assert "bytes.png" in written
    for name in written:
        assert_png(out / name)
    assert "accuracy.png" in {
        p.name for p in plot([demo_run], tmp_path / "dir")
    }  # a demo's workdir: its report and logs
