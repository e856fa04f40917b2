"""Argument types and option groups shared by the commands; the run settings' options come from
their definitions in onebyte.settings."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from onebyte import settings


def _number(cast, minimum: float, inclusive: bool, what: str):
    """An argparse type: a finite number of type ``cast`` that is >= (or >) ``minimum``."""

    def parse(s: str):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not math.isfinite(v) or v < minimum or (v == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {minimum}, got {s}")
        return v

    return parse


positive_int = _number(int, 1, True, "a whole number")
nonneg_int = _number(int, 0, True, "a whole number")
positive_float = _number(float, 0, False, "a number")
nonneg_float = _number(float, 0, True, "a number")


def directions(s: str) -> str:
    """An argparse type: a direction family the protocol knows ('dense', 'lowrank:<r>')."""
    from onebyte.zo.directions import Directions

    try:
        return Directions.parse(s).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def allowlist(path: str) -> list[str]:
    """An argparse type: a file of peer public keys (64 hex characters per line)."""
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror}") from None
    keys = sorted({line.split("#")[0].strip().lower() for line in lines} - {""})
    bad = [k for k in keys if not re.fullmatch(r"[0-9a-f]{64}", k)]
    if bad or not keys or len(keys) > 64:
        raise argparse.ArgumentTypeError(
            f"{path}: expected 1..64 public keys of 64 hex characters, one per line"
            + (f"; bad: {bad[0][:20]!r}" if bad else "")
        )
    return keys


def shard(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", s)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {s!r}")
    return int(m.group(1)), int(m.group(2))


def maddr(s: str) -> str:
    if not s.startswith("/") or "/p2p/" not in s:
        raise argparse.ArgumentTypeError(f"expected a multiaddr like /ip4/1.2.3.4/tcp/31337/p2p/Qm..., got {s!r}")
    return s


def run_id(s: str) -> str:
    """An argparse type: a run id as the manifest allows it."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", s):
        raise argparse.ArgumentTypeError(f"{s!r}: a run id is 1 to 128 letters, digits, '.', '_' or '-'")
    return s


def public_key(s: str) -> str:
    """An argparse type: a peer's public key as `onebyte identity` prints it."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", s):
        raise argparse.ArgumentTypeError(
            f"{s[:20]!r}: expected a public key of 64 hex characters (`onebyte identity` prints one)"
        )
    return s.lower()


def output_path(path: str) -> str:
    """An argparse type: a file we will write later (report, round log), checked now rather than
    after the model has loaded and rounds have run: not a folder, and under a writable folder."""
    target = Path(path)
    if target.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, expected a file path")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: cannot write under {parent}")
    return path


# the argument types a setting's ``cli`` metadata may name
ARG_TYPES = {
    "positive_int": positive_int,
    "nonneg_int": nonneg_int,
    "positive_float": positive_float,
    "nonneg_float": nonneg_float,
    "directions": directions,
    "allowlist": allowlist,
}


def add_setting(g, name: str, family: str, default: bool) -> None:
    """Option ``--<name>`` for run setting ``name`` as command family ``family`` (train, run or eval)
    shows it: with the setting's default (``train``), else None (the run's or the recorded one)."""
    spec = settings.cli_spec(name)
    kw = {"default": settings.default(name) if default else None}
    if "type" in spec:
        kw["type"] = ARG_TYPES[spec["type"]]
    for key in ("choices", "metavar"):
        if key in spec:
            kw[key] = spec[key]
    if family in spec:
        kw["help"] = spec[family]
    g.add_argument("--" + name.replace("_", "-"), **kw)


def add_settings(g, names: str, family: str, default: bool = False) -> None:
    for name in names.split():
        add_setting(g, name, family, default)


MODEL_DATA = (
    "model model_kind dtype device dataset task text_column label_column label_words template max_length "
    "trainable init_seed"
)
RUN_SETTINGS = (
    "model model_kind dtype dataset task text_column label_column label_words template max_length "
    "trainable init_seed lr eps weight_decay codec table_log2 directions optimizer beta1 beta2 optim_eps "
    "contribs_per_round round_seconds "
    "lean_replicas hash_every allowed_peers max_round_contributions clip_abs clip_median seniority_window "
    "max_new_contributions"
)


def add_model_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    for name in MODEL_DATA.split():
        if name == "device":
            g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: %(default)s)")
        else:
            add_setting(g, name, "train", default=True)


def add_optim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    add_settings(g, "lr eps weight_decay", "train", default=True)
    g.add_argument(
        "--batch-size", type=positive_int, default=16, help="examples per contribution (default: %(default)s)"
    )
    g.add_argument(
        "--contribs", type=positive_int, default=1, help="contributions (seeds) per step/round (default: %(default)s)"
    )
    add_settings(g, "codec table_log2 directions optimizer beta1 beta2 optim_eps", "train", default=True)
    g.add_argument("--seed", type=nonneg_int, default=0, help="run seed: data order and splits (default: %(default)s)")
    g.add_argument("--eval-size", type=positive_int, default=None, help="held-out examples to evaluate (default: all)")
    g.add_argument("--eval-batch-size", type=positive_int, default=16)


def add_swarm_setting_args(p: argparse.ArgumentParser) -> None:
    """Settings of the run: taken from its manifest unless given; a given one must match it."""
    g = p.add_argument_group("run settings (agreed by all peers; default: the run's manifest)")
    add_settings(g, RUN_SETTINGS, "run")


def given_settings(args: argparse.Namespace, names=settings.AGREED_FIELDS) -> dict:
    """The run settings among ``names`` that ``args`` gives (not None), as the settings' own types."""
    out = {}
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            out[name] = v.split(",") if settings.cli_spec(name).get("list") and isinstance(v, str) else v
    return out


def add_network_args(p: argparse.ArgumentParser, initial_required: bool = False) -> None:
    g = p.add_argument_group("network")
    g.add_argument(
        "--initial-peers",
        type=maddr,
        action="append",
        default=[],
        help="multiaddr of a peer or bootstrap node to join through (repeatable)"
        + ("; required, here or in --initial-peers-file" if initial_required else ""),
    )
    g.add_argument(
        "--initial-peers-file",
        default=None,
        help="file with more such multiaddrs, one a line (what `onebyte bootstrap --maddrs-file` writes)",
    )
    g.add_argument(
        "--host-maddrs", action="append", default=None, help="multiaddrs to listen on (default: /ip4/127.0.0.1/tcp/0)"
    )
    g.add_argument(
        "--announce-maddrs", action="append", default=None, help="multiaddrs others should use to reach this node"
    )
    p.set_defaults(needs_initial_peers=initial_required)


def add_metrics_args(p, per_peer: bool = False) -> None:
    """Where this node serves Prometheus metrics: off unless a port is given, on loopback unless a host is."""
    port_help = "peer i on this port + i" if per_peer else "on this port"
    p.add_argument(
        "--metrics-port",
        type=positive_int,
        default=None,
        help=f"serve Prometheus metrics {port_help} (default: off; the documented port is {settings.METRICS_PORT})",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics endpoint binds (default: 127.0.0.1, this machine only; 0.0.0.0 for a Prometheus "
        "elsewhere, e.g. in another container, behind your firewall: it shows your peer id and progress)",
    )


def add_nat_args(p: argparse.ArgumentParser, client_mode: bool = True) -> None:
    """How this node deals with NAT (hivemind's options, see deploy/VOLUNTEER.md)."""
    g = p.add_argument_group("NAT and relays")
    if client_mode:
        g.add_argument(
            "--client-mode",
            action="store_true",
            help="a DHT client: reaches others, is reached by none (behind NAT with no open port); "
            "needs reachable peers or a bootstrap node",
        )
    g.add_argument(
        "--use-auto-relay",
        action="store_true",
        help="behind NAT: find libp2p relays among the peers and become reachable through them",
    )
    g.add_argument(
        "--no-relay",
        action="store_true",
        help="do not use libp2p circuit relays at all (hivemind uses them by default)",
    )


def dht_options(args: argparse.Namespace) -> dict:
    """The NAT options as keyword arguments of start_dht."""
    out = {}
    if getattr(args, "client_mode", False):
        out["client_mode"] = True
    if getattr(args, "use_auto_relay", False):
        out["use_auto_relay"] = True
    if getattr(args, "no_relay", False):
        out["use_relay"] = False
    return out


def read_initial_peers_file(path: str) -> list[str]:
    out = []
    for line in open(path).read().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                out.append(maddr(line))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"{path}: {e}") from None
    return out


def eval_summary(before: dict | None, after: dict | None) -> str:
    """One line: held-out (balanced) accuracy before -> after, against the zero-shot model's bias-only line."""
    b, a = before or {}, after or {}
    nan = float("nan")
    if "balanced_accuracy" not in b and "accuracy" not in b:
        return f"held-out loss {b.get('loss', nan):.4f} -> {a.get('loss', nan):.4f}"
    return (
        f"held-out balanced accuracy {b.get('balanced_accuracy', nan):.3f} -> "
        f"{a.get('balanced_accuracy', nan):.3f} (bias-only line {b.get('bias_line_balanced_accuracy', nan):.3f}), "
        f"accuracy {b.get('accuracy', nan):.3f} -> {a.get('accuracy', nan):.3f}, "
        f"loss {b.get('loss', nan):.4f} -> {a.get('loss', nan):.4f}"
    )
