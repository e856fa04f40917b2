"""`onebyte plot` refusing what it cannot read: one line, exit code 2, in a child process. Plotting
what a real demo run leaves behind: tests/swarm/test_plot.py."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-m", "onebyte.cli"]


def test_plot_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for args in ([str(tmp_path / "missing.json")], [str(empty)]):
        r = subprocess.run(
            [*CLI, "plot", *args, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
