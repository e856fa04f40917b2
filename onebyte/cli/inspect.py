"""Commands that look without taking part: ``runs`` and ``status`` (tables of what a swarm's DHT
holds, read by onebyte.dht.inspect) and ``identity`` (a peer's public key)."""

from __future__ import annotations

import argparse
import sys
import time

from onebyte.cli.options import add_network_args, run_id


def add_runs_parser(sub) -> None:
    p = sub.add_parser(
        "runs",
        help="list the runs visible in a swarm",
        description="List runs visible in the swarm: id, model, task, round, live peers.",
    )
    add_network_args(p, initial_required=True)
    p.set_defaults(func=cmd_runs)


def add_status_parser(sub) -> None:
    p = sub.add_parser(
        "status",
        help="list the live peers of a run",
        description="Live peers of a run: round, last weight hash, contributions made and rate, version.",
    )
    p.add_argument("--run-id", required=True, type=run_id)
    add_network_args(p, initial_required=True)
    p.set_defaults(func=cmd_status)


def add_identity_parser(sub) -> None:
    p = sub.add_parser(
        "identity",
        help="print (creating if needed) a peer's public key",
        description="Print the public key of the signing key in FILE, creating the key if FILE "
        "does not exist. This is the peer id others see, and what a private run's "
        "--allowed-peers file lists.",
    )
    p.add_argument("--identity", required=True, metavar="FILE", help="the key file `onebyte peer --identity` uses")
    p.set_defaults(func=cmd_identity)


def admission(m) -> str:
    """Who counts in the run's rounds (docs/PROTOCOL.md §15), as a volunteer deciding to join reads it."""
    if m.allowed_peers is not None:
        return f"private, {len(m.allowed_peers)} member key(s)"
    r = m.rule
    clips = [f"clip |g| at {r.clip_abs:g}"] if r.clip_abs else []
    clips += [f"clip at {r.clip_median:g}x the round's median"] if r.clip_median else []
    clips = ", ".join(clips)
    if r.by_seniority:
        return (
            f"public, by seniority: at most {r.max_contributions} contributions a round, {r.max_new_contributions} "
            f"from new keys, seniority over {r.seniority_window} rounds" + (f", {clips}" if clips else "")
        )
    if r.active:
        cap = f"at most {r.max_contributions} contributions a round" if r.max_contributions else "no cap"
        return f"public, {cap}" + (f", {clips}" if clips else "") + ", no bound on new keys"
    return "public, every key counts (no cap, no clip, no bound on new keys)"


def _report_rejected(command: str, rejected) -> None:
    """One line on stderr for records that were dropped (malformed, too deep, extension types ...)."""
    if rejected:
        print(
            f"onebyte {command}: ignored {sum(rejected.values())} malformed record(s): "
            + ", ".join(f"{n} {k}" for k, n in sorted(rejected.items())),
            file=sys.stderr,
        )


def cmd_runs(args: argparse.Namespace) -> int:
    from onebyte.dht.client import DHTUnavailable
    from onebyte.dht.inspect import list_runs

    try:
        rows, rejected = list_runs(args.initial_peers)
    except DHTUnavailable as e:
        print(f"onebyte runs: error: the run list could not be read: {e}", file=sys.stderr)
        return 1
    _report_rejected("runs", rejected)
    if not rows:
        print("no runs visible")
        return 0
    # ROUND: a live run's newest final round by its clock (else its last announcement's); PEERS: live peers
    print(f"{'RUN':<28} {'MODEL':<24} {'TASK':<16} {'ROUND':>6} {'PEERS':>5}")
    for r in rows:
        print(f"{r.run_id:<28} {r.model:<24} {r.task:<16} {r.round:>6} {r.peers:>5}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from onebyte.coordinator_free.manifest import pick_manifest
    from onebyte.dht.client import DHTUnavailable
    from onebyte.dht.inspect import run_clock, run_status
    from onebyte.dht.wire import clip

    try:
        status = run_status(args.initial_peers, args.run_id)
    except DHTUnavailable as e:
        print(f"onebyte status: error: run {args.run_id!r} could not be read: {e}", file=sys.stderr)
        return 1
    _report_rejected("status", status.rejected)
    manifests, peers = status.manifests, status.peers
    for creator, m in sorted(manifests.items(), key=lambda kv: (kv[1].created_at, kv[0])):
        try:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.created_at)) + " UTC"
        except (OverflowError, ValueError, OSError):  # a manifest's own claim, anything
            created = f"at {m.created_at!r}"
        print(f"manifest by {creator} created {created}: {clip(m.model, 64)}, lr {m.lr:g}, {m.round_seconds:g}s rounds")
        print(f"  admission: {admission(m)}")
    if len(manifests) > 1:
        print(
            f"{len(manifests)} manifests claim this run id: "
            "peers take the earliest unless started with --run-creator KEY"
        )
    picked = pick_manifest(manifests, args.run_id)
    now, final = run_clock(picked[1]) if picked else (None, None)
    if now is not None:
        print(
            f"run clock: round {now} in progress, round {final} final (peers apply it within seconds)"
            if now >= 0
            else "run clock: round 0 has not opened yet"
        )
    if not peers:
        print(f"no live peers in run {args.run_id!r}")
        return 1
    print(f"{'PEER':<18} {'ROUND':>6} {'HASH':<14} {'MADE':>7} {'RATE/s':>7} {'VERSION':<10}")
    for peer_id, hb in sorted(peers.items(), key=lambda kv: (-kv[1].round, kv[0])):
        print(
            f"{peer_id[:16]:<18} {hb.round:>6} {clip(hb.sha256[:12], 12) or '-':<14} {hb.made:>7} {hb.rate:>7.3f} "
            f"{clip(hb.version, 32):<10}"
        )
    rounds = {hb.round for hb in peers.values()}
    print(f"{len(peers)} live peer(s), rounds {min(rounds)}..{max(rounds)} at their last heartbeat (once a minute)")
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    from onebyte.dht.identity import Identity

    print(Identity.load_or_create(args.identity).peer_id)
    return 0
