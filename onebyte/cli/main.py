"""The ``onebyte`` command: the parser of every command, and what happens around a command's run
(config file and environment, logging, one-line user errors, exit codes)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from onebyte import __version__
from onebyte.cli import inspect, swarm, train
from onebyte.cli.config import add_config_option
from onebyte.cli.options import read_initial_peers_file

# the commands in the order `onebyte --help` lists them
COMMANDS = (
    train.add_train_parser,
    swarm.add_bootstrap_parser,
    swarm.add_peer_parser,
    swarm.add_demo_parser,
    train.add_export_parser,
    train.add_eval_parser,
    inspect.add_runs_parser,
    inspect.add_status_parser,
    inspect.add_identity_parser,
    train.add_plot_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onebyte", description="Decentralized zeroth-order fine-tuning, about one byte per gradient."
    )
    parser.add_argument("--version", action="version", version=f"onebyte {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ONEBYTE_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    add_config_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from onebyte.cli.config import ConfigError, apply_config

    parser = build_parser()
    try:  # precedence: command line > ONEBYTE_<OPTION> variables > --config file > defaults
        apply_config(parser, sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as e:
        print(f"onebyte: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if getattr(args, "initial_peers_file", None):
        try:
            args.initial_peers = [*args.initial_peers, *read_initial_peers_file(args.initial_peers_file)]
        except (OSError, ValueError) as e:
            print(f"onebyte {args.command}: error: --initial-peers-file: {e}", file=sys.stderr)
            return 2
    if getattr(args, "needs_initial_peers", False) and not args.initial_peers:
        parser.error(f"{args.command}: --initial-peers (or --initial-peers-file) is required")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    from onebyte import logbounds

    logbounds.install()  # other peers' bytes must not fill this peer's log (rate-limited, lines cut)
    from onebyte.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as e:
        logging.getLogger("onebyte").debug("user error", exc_info=True)
        print(f"onebyte {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"onebyte {args.command}: interrupted", file=sys.stderr)
        return 130
