"""Commands that take part in a swarm: ``bootstrap`` (a DHT node peers join through), ``peer`` (join
or create a run and train with it), ``demo`` (a bootstrap node and N peers on loopback)."""

from __future__ import annotations

import argparse
import signal
import threading

from onebyte.cli.options import (
    add_metrics_args,
    add_nat_args,
    add_network_args,
    add_swarm_setting_args,
    dht_options,
    eval_summary,
    given_settings,
    nonneg_float,
    nonneg_int,
    output_path,
    positive_float,
    positive_int,
    public_key,
    run_id,
    shard,
)


def add_bootstrap_parser(sub) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="run a DHT node that peers join through",
        description="Run a DHT node; prints the multiaddrs peers pass as --initial-peers.",
    )
    add_network_args(p)
    p.add_argument(
        "--identity-path", default=None, help="libp2p identity file: keeps this node's address stable across restarts"
    )
    p.add_argument(
        "--maddrs-file",
        type=output_path,
        default=None,
        help="also write the multiaddrs here, one a line (peers read it with --initial-peers-file)",
    )
    add_metrics_args(p)
    add_nat_args(p, client_mode=False)
    p.set_defaults(func=cmd_bootstrap)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from onebyte.dht.bootstrap import BootstrapNode

    node = BootstrapNode(
        args.initial_peers,
        host_maddrs=args.host_maddrs,
        announce_maddrs=args.announce_maddrs,
        identity_path=args.identity_path,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        dht_options=dht_options(args),
    )
    try:
        for a in node.maddrs:
            print(a, flush=True)
        if args.maddrs_file:
            node.write_maddrs(args.maddrs_file)
        print("bootstrap node running; peers join with --initial-peers ADDR (Ctrl-C to stop)", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        node.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        node.shutdown()
    return 0


def add_peer_parser(sub) -> None:
    p = sub.add_parser(
        "peer",
        help="join a run and train with the swarm",
        description="Join (or with --new-run create) a run and train with its peers.",
    )
    p.add_argument("--run-id", required=True, type=run_id, help="name of the run (letters, digits, . _ -)")
    p.add_argument(
        "--new-run", action="store_true", help="create the run if it does not exist yet, with these settings"
    )
    p.add_argument(
        "--run-creator",
        type=public_key,
        default=None,
        metavar="KEY",
        help="only the manifest published by this key is the run's "
        "(guards against a backdated manifest under the same run id)",
    )
    add_network_args(p)
    add_swarm_setting_args(p)
    g = p.add_argument_group("this peer")
    g.add_argument(
        "--identity",
        default=None,
        help="file with this peer's signing key (created if missing); default: a new key each start",
    )
    g.add_argument("--device", default="cpu")
    g.add_argument(
        "--batch-size", type=positive_int, default=16, help="examples per contribution (default: %(default)s)"
    )
    g.add_argument(
        "--shard", type=shard, default=(0, 1), help="train on shard I of N of the training data (default: 0/1)"
    )
    g.add_argument(
        "--max-examples",
        type=positive_int,
        default=None,
        help="train on at most this many examples of the shard, chosen by hash (default: all)",
    )
    g.add_argument(
        "--population",
        type=positive_int,
        default=1,
        metavar="K",
        help="evaluate K contributions (2K perturbed passes, each on its own batch) in one batched forward: "
        "low-rank runs only, others make them one by one; a GPU peer should fill its batch "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--rounds",
        type=positive_int,
        default=None,
        help="leave after applying this many rounds (default: run until Ctrl-C)",
    )
    g.add_argument("--evaluate", action="store_true", help="evaluate on held-out data before and after")
    g.add_argument("--eval-size", type=positive_int, default=None)
    g.add_argument("--eval-batch-size", type=positive_int, default=16)
    g.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        metavar="ROUNDS",
        help="score a small fixed held-out subset after every ROUNDS rounds (metrics, round log, report): "
        "the learning curve",
    )
    g.add_argument(
        "--eval-every-size",
        type=positive_int,
        default=128,
        help="held-out examples in that subset (default: %(default)s)",
    )
    g.add_argument("--report", type=output_path, default=None, help="write a JSON summary here when leaving")
    g.add_argument("--round-log", type=output_path, default=None, help="append one JSON line per applied round here")
    g.add_argument(
        "--checkpoint-dir",
        default=None,
        help="keep checkpoints and the seed log here; a restart resumes from them, and other peers catch up from them",
    )
    g.add_argument(
        "--checkpoint-interval",
        type=nonneg_float,
        default=120.0,
        help="seconds between checkpoints, taken at hash rounds (default: %(default)s)",
    )
    g.add_argument(
        "--catch-up",
        choices=["auto", "log", "checkpoint"],
        default="auto",
        help="how to catch up when behind: the cheaper by estimate, only peers' seed logs, "
        "or only checkpoints (default: %(default)s)",
    )
    g.add_argument(
        "--num-replicas", type=positive_int, default=None, help="DHT replication factor (default: hivemind's)"
    )
    g.add_argument("--join-timeout", type=positive_float, default=120.0, help="seconds to wait for the run's manifest")
    g.add_argument("--start-delay", type=nonneg_float, default=20.0, help="with --new-run: seconds until round 0")
    g.add_argument("--seed", type=nonneg_int, default=0, help="data order seed")
    g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--no-progress", action="store_true")
    add_metrics_args(g)
    add_nat_args(p)
    p.set_defaults(func=cmd_peer)


def peer_config(args: argparse.Namespace):
    """``onebyte peer``'s options as the peer's SwarmConfig."""
    from onebyte.settings import SwarmConfig, config_from

    # options named as SwarmConfig's fields are taken as they are; these four are spelled differently
    return config_from(
        SwarmConfig,
        args,
        local=given_settings(args),
        identity_path=args.identity,
        dht_options=dht_options(args),
        host_maddrs=args.host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
        checkpoint_seconds=args.checkpoint_interval,
        progress=not args.no_progress,
    )


def cmd_peer(args: argparse.Namespace) -> int:
    from onebyte.peer.swarm import run_peer

    print(peer_summary(run_peer(peer_config(args))))
    return 0


def peer_summary(report: dict) -> str:
    """The line ``onebyte peer`` ends with."""
    return (
        f"peer {report['peer_id'][:8]}: applied {report['rounds_applied']} rounds, "
        f"made {report['contributions_made']} contributions, weights sha256 {report['final_sha256']}"
    )


def add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="a local swarm: bootstrap node + N peers on loopback",
        description="Start a bootstrap node and N peer processes on loopback, train, evaluate and summarize.",
    )
    p.add_argument("--peers", type=positive_int, default=4)
    p.add_argument("--rounds", type=positive_int, default=30)
    p.add_argument("--run-id", type=run_id, default=None)
    p.add_argument("--workdir", default=None, help="folder for logs and per-peer reports (default: a temporary folder)")
    p.add_argument("--report", type=output_path, default=None, help="write the JSON summary here")
    add_swarm_setting_args(p)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument(
        "--max-examples",
        type=positive_int,
        default=None,
        help="each peer trains on at most this many examples of its shard",
    )
    p.add_argument("--num-replicas", type=positive_int, default=None)
    p.add_argument("--eval-size", type=positive_int, default=None, help="held-out examples to evaluate (default: all)")
    p.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        metavar="ROUNDS",
        help="the first peer also scores a small held-out subset every ROUNDS rounds",
    )
    p.add_argument(
        "--eval-every-size",
        type=positive_int,
        default=None,
        help="held-out examples in that subset (default: the peer's, 128)",
    )
    p.add_argument("--no-progress", action="store_true")
    add_metrics_args(p, per_peer=True)
    p.add_argument(
        "--start-delay",
        type=nonneg_float,
        default=None,
        help="seconds from creating the run to its round 0 (default: the peer's, 20)",
    )
    p.set_defaults(func=cmd_demo)


def _flags(pairs) -> list[str]:
    """``--name value`` for each (name, value) whose value is not None; lists joined by commas."""
    out = []
    for k, v in pairs:
        if v is not None:
            out += ["--" + k.replace("_", "-"), ",".join(v) if isinstance(v, list) else str(v)]
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from onebyte.peer.demo import DemoConfig, run_demo

    own = ("device", "batch_size", "num_replicas", "max_examples")
    passthrough = _flags([*given_settings(args).items(), *((k, getattr(args, k)) for k in own)])
    first = _flags((k, getattr(args, k)) for k in ("start_delay", "eval_every", "eval_every_size"))
    report = run_demo(
        DemoConfig(
            peers=args.peers,
            rounds=args.rounds,
            run_id=args.run_id,
            workdir=args.workdir,
            report=args.report,
            peer_args=passthrough,
            first_peer_args=first,
            eval_size=args.eval_size,
            progress=not args.no_progress,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
    )
    hashes = "all equal" if report["all_hashes_equal"] else "DIFFER"
    print(
        f"demo: {args.peers} peers, {args.rounds} rounds, {report['contributions_total']} contributions "
        f"({report['contributing_fraction']:.0%} of the peers' time spent making them); hashes {hashes}; "
        f"{eval_summary(report['eval_before'], report['eval_after'])}"
    )
    return 0 if report["all_hashes_equal"] else 1
