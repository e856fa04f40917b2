"""Options from --config files (YAML, TOML) and ONEBYTE_<OPTION> variables: precedence CLI > env > file > defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from onebyte.cli import build_parser
from onebyte.cli.config import ConfigError, apply_config, child_environment

CLI = [sys.executable, "-m", "onebyte.cli"]
A = "/ip4/10.0.0.1/tcp/31337/p2p/12D3KooWAAAA"
B = "/ip4/10.0.0.2/tcp/31337/p2p/12D3KooWBBBB"
C = "/ip4/10.0.0.3/tcp/31337/p2p/12D3KooWCCCC"


def parse(argv: list[str], env: dict | None = None):
    parser = build_parser()
    apply_config(parser, argv, env or {})
    return parser.parse_args(argv)


YAML = f"""
run-id: from-file
initial-peers: [{A}]
lr: 0.002
new_run: true
peer:
  metrics-port: 9100
  shard: 1/3
  batch-size: 8
  lr: 0.004           # a command's own section wins over the top level
"""

TOML = f"""
run_id = "from-toml"
initial-peers = ["{A}", "{B}"]
[peer]
round-seconds = 6
client-mode = true
"""


def test_yaml_file_sets_options_and_its_command_section_wins(tmp_path):
    f = tmp_path / "onebyte.yaml"
    f.write_text(YAML)
    a = parse(["peer", "--config", str(f)])
    assert (a.run_id, a.initial_peers, a.new_run, a.metrics_port, a.shard, a.batch_size, a.lr) == (
        "from-file",
        [A],
        True,
        9100,
        (1, 3),
        8,
        0.004,
    )
    assert a.device == "cpu" and a.rounds is None  # defaults where the file says nothing
    # the same file serves another command: top-level keys it has, its own section, nothing else
    s = parse(["--config", str(f), "status"])
    assert (s.run_id, s.initial_peers) == ("from-file", [A])
    t = parse(["train", "--config", str(f)])
    assert t.lr == 0.002


def test_toml_file(tmp_path):
    f = tmp_path / "onebyte.toml"
    f.write_text(TOML)
    a = parse(["peer", "--config", str(f)])
    assert (a.run_id, a.initial_peers, a.round_seconds, a.client_mode) == ("from-toml", [A, B], 6.0, True)


def test_precedence_command_line_over_environment_over_file_over_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(YAML)
    assert parse(["peer", "--config", str(f)]).eval_batch_size == 16  # default
    env = {
        "ONEBYTE_RUN_ID": "from-env",
        "ONEBYTE_LR": "0.01",
        "ONEBYTE_INITIAL_PEERS": f"{B}, {C}",
        "ONEBYTE_NEW_RUN": "false",
        "ONEBYTE_EVAL_BATCH_SIZE": "4",
    }
    a = parse(["peer", "--config", str(f)], env)
    assert (a.run_id, a.lr, a.initial_peers, a.new_run, a.eval_batch_size) == ("from-env", 0.01, [B, C], False, 4)
    assert a.metrics_port == 9100  # the file still gives what the environment does not
    a = parse(["peer", "--config", str(f), "--run-id", "from-cli", "--lr", "0.5", "--initial-peers", A], env)
    assert (a.run_id, a.lr, a.initial_peers) == (
        "from-cli",
        0.5,
        [A],
    )  # a list on the command line replaces, not extends
    # ONEBYTE_CONFIG names the file when --config does not
    a = parse(["peer"], {"ONEBYTE_CONFIG": str(f)})
    assert a.run_id == "from-file"


def test_required_options_can_come_from_the_environment():
    a = parse(["status"], {"ONEBYTE_RUN_ID": "r", "ONEBYTE_INITIAL_PEERS": A})
    assert (a.run_id, a.initial_peers) == ("r", [A])
    with pytest.raises(SystemExit):
        parse(["status"], {"ONEBYTE_INITIAL_PEERS": A})  # still required when nothing gives it


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ONEBYTE_LR": "abc"}, "environment variable ONEBYTE_LR: expected a number, got 'abc'"),
        ({"ONEBYTE_SHARD": "5/2"}, "ONEBYTE_SHARD: expected I/N"),
        ({"ONEBYTE_NEW_RUN": "maybe"}, "ONEBYTE_NEW_RUN: expected true or false"),
        ({"ONEBYTE_DTYPE": "int8"}, "ONEBYTE_DTYPE: 'int8' is not one of"),
        ({"ONEBYTE_INITIAL_PEERS": "bogus"}, "ONEBYTE_INITIAL_PEERS: expected a multiaddr"),
    ],
)
def test_bad_environment_values_are_refused(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse(["peer"], env)


def test_the_demo_does_not_pass_its_own_variables_to_its_peers():
    env = child_environment(
        {
            "ONEBYTE_METRICS_PORT": "9100",
            "ONEBYTE_CONFIG": "x.yaml",
            "ONEBYTE_CACHE": "/c",
            "ONEBYTE_LOG_LEVEL": "DEBUG",
            "PATH": "/bin",
        }
    )
    assert env == {"ONEBYTE_CACHE": "/c", "ONEBYTE_LOG_LEVEL": "DEBUG", "PATH": "/bin"}


BAD_FILES = [
    ("unknown.yaml", "bogus-option: 1\n", "unknown option 'bogus-option' (not an option of any onebyte command)"),
    ("section.yaml", "peer:\n  lrr: 1\n", "unknown option 'lrr' in section 'peer'"),
    ("syntax.yaml", "run-id: [a,\n", "invalid YAML at line 2"),
    ("syntax.toml", "run_id = \n", "invalid TOML"),
    ("list.yaml", "- a\n- b\n", "expected a mapping of option names to values, got list"),
    ("type.yaml", "lr: fast\n", "lr: expected a number, got 'fast'"),
    ("scalar.toml", 'run-id = ["a", "b"]\n', "run-id: expected a single value"),
    ("missing.yaml", None, "not found"),
]


@pytest.mark.parametrize("name, text, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_config_file_is_a_one_line_error_with_exit_code_2(tmp_path, name, text, message):
    f = tmp_path / name
    if text is not None:
        f.write_text(text)
    r = subprocess.run(
        [*CLI, "peer", "--config", str(f)], capture_output=True, text=True, timeout=60, env=child_environment()
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("onebyte: error: config file ") and message in lines[0], lines[0]


def test_help_mentions_the_config_file():
    r = subprocess.run([*CLI, "peer", "--help"], capture_output=True, text=True, timeout=60, env=os.environ)
    assert r.returncode == 0 and "--config FILE" in r.stdout and "ONEBYTE_<OPTION>" in r.stdout
