"""Options from a config file, ONEBYTE_<OPTION> variables and the command line, taken by a real
command (`onebyte status`) against a real bootstrap node. The parsing itself: tests/unit/test_config.py."""

from __future__ import annotations

import subprocess

from onebyte.cli.config import child_environment
from onebyte.peer.demo import start_bootstrap
from tests.unit.test_config import CLI


def test_a_real_command_takes_its_options_from_file_environment_and_command_line(tmp_path):
    """`onebyte status` against a real bootstrap node: run id and address from each source in turn."""
    boot, maddrs = start_bootstrap(tmp_path)
    try:
        f = tmp_path / "status.toml"
        f.write_text(f'run-id = "file-run"\ninitial-peers = {maddrs[:1]!r}\n'.replace("'", '"'))
        base = child_environment() | {"ONEBYTE_LOG_LEVEL": "ERROR"}
        runs = {
            "file-run": ([*CLI, "status", "--config", str(f)], base),
            "env-run": ([*CLI, "status", "--config", str(f)], base | {"ONEBYTE_RUN_ID": "env-run"}),
            "cli-run": (
                [*CLI, "status", "--config", str(f), "--run-id", "cli-run"],
                base | {"ONEBYTE_RUN_ID": "env-run"},
            ),
            "env-only": (
                [*CLI, "status"],
                base | {"ONEBYTE_RUN_ID": "env-only", "ONEBYTE_INITIAL_PEERS": ",".join(maddrs)},
            ),
        }
        for run_id, (cmd, env) in runs.items():
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
            assert r.returncode == 1 and f"no live peers in run {run_id!r}" in r.stdout, (
                run_id,
                r.stdout,
                r.stderr[-2000:],
            )
    finally:
        boot.terminate()
        boot.wait(timeout=30)
