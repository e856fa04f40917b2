"""The ``onebyte`` command: a thin layer over the Python API (onebyte.peer.train, ...)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
from pathlib import Path

from onebyte import __version__
from onebyte.peer.config import add_config_option
from onebyte.tasks.builtin import DEFAULT_DATASET


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


_positive_int = _number(int, 1, True, "a whole number")
_nonneg_int = _number(int, 0, True, "a whole number")
_positive_float = _number(float, 0, False, "a number")
_nonneg_float = _number(float, 0, True, "a number")


def add_model_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="smollm2-135m", help="built-in name (smollm2-135m, tiny-llama, tiny-gpt2), local folder or hub name (default: %(default)s)")
    g.add_argument("--model-kind", default="causal-lm", choices=["causal-lm", "seq-cls"], help="head to load (default: %(default)s)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: %(default)s)")
    g.add_argument("--dataset", default=DEFAULT_DATASET, help="built-in (mr, trec, drugreview), local file/folder (csv, tsv, json, jsonl, parquet) or hub name (default: %(default)s)")
    g.add_argument("--task", choices=["classification", "lm"], default=None, help="prompt classification on label words, or language-model loss")
    g.add_argument("--text-column", default="text")
    g.add_argument("--label-column", default="label")
    g.add_argument("--label-words", default=None, help="comma-separated label words, in label order, e.g. ' negative, positive'")
    g.add_argument("--template", default=None, help="prompt template with {text}")
    g.add_argument("--max-length", type=_positive_int, default=64, help="tokens per example (default: %(default)s)")
    g.add_argument("--trainable", default=None, help="regex over parameter names to train (default: all)")
    g.add_argument("--init-seed", type=_nonneg_int, default=0, help="init seed of config-built tiny models")


def add_optim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=_positive_float, default=1e-5, help="learning rate (default: %(default)s)")
    g.add_argument("--eps", type=_positive_float, default=1e-3, help="perturbation scale epsilon (default: %(default)s)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=0.0, help="decoupled weight decay on matrices (default: 0)")
    g.add_argument("--batch-size", type=_positive_int, default=16, help="examples per contribution (default: %(default)s)")
    g.add_argument("--contribs", type=_positive_int, default=1, help="contributions (seeds) per step/round (default: %(default)s)")
    g.add_argument("--codec", default="log8:-8:8", help="wire code for g: 'log8:<min_exp>:<steps_per_octave>' or 'float32' (default: %(default)s)")
    g.add_argument("--table-log2", type=_positive_int, default=25, help="log2 of the noise table size (default: %(default)s)")
    g.add_argument("--directions", type=_directions, default="dense",
                   help="perturbation directions: 'dense' (protocol v1) or 'lowrank:<r>' (v2: evaluated inside the forward, exact one-pass apply) (default: %(default)s)")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="run seed: data order and splits (default: %(default)s)")
    g.add_argument("--eval-size", type=_positive_int, default=None, help="held-out examples to evaluate (default: all)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=16)


def _directions(s: str) -> str:
    """An argparse type: a direction family the protocol knows ('dense', 'lowrank:<r>')."""
    from onebyte.zo.directions import Directions

    try:
        return Directions.parse(s).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _label_words(s: str | None) -> list[str] | None:
    return None if s is None else [w for w in s.split(",")]


def cmd_train(args: argparse.Namespace) -> int:
    from onebyte.peer.train import TrainConfig, train

    cfg = TrainConfig(
        model=args.model, model_kind=args.model_kind, dtype=args.dtype, device=args.device,
        dataset=args.dataset, task=args.task, text_column=args.text_column, label_column=args.label_column,
        label_words=_label_words(args.label_words), template=args.template, max_length=args.max_length,
        trainable=args.trainable, init_seed=args.init_seed,
        steps=args.steps, contribs=args.contribs, batch_size=args.batch_size, lr=args.lr, eps=args.eps,
        weight_decay=args.weight_decay, codec=args.codec, table_log2=args.table_log2, directions=args.directions, seed=args.seed,
        eval_size=args.eval_size, eval_batch_size=args.eval_batch_size,
        checkpoint=args.checkpoint, report=args.report, progress=not args.no_progress,
    )
    report = train(cfg)
    print(f"trained {report['steps']} steps: {eval_summary(report['eval_before'], report['eval_after'])}; weights sha256 {report['final_sha256']}")
    return 0


def eval_summary(before: dict | None, after: dict | None) -> str:
    """One line: held-out (balanced) accuracy before -> after, against the zero-shot model's bias-only line."""
    b, a = before or {}, after or {}
    if "balanced_accuracy" not in b and "accuracy" not in b:
        return f"held-out loss {b.get('loss', float('nan')):.4f} -> {a.get('loss', float('nan')):.4f}"
    return (f"held-out balanced accuracy {b.get('balanced_accuracy', float('nan')):.3f} -> {a.get('balanced_accuracy', float('nan')):.3f} "
            f"(bias-only line {b.get('bias_line_balanced_accuracy', float('nan')):.3f}), accuracy {b.get('accuracy', float('nan')):.3f} -> "
            f"{a.get('accuracy', float('nan')):.3f}, loss {b.get('loss', float('nan')):.4f} -> {a.get('loss', float('nan')):.4f}")


def _shard(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", s)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {s!r}")
    return int(m.group(1)), int(m.group(2))


def _maddr(s: str) -> str:
    if not s.startswith("/") or "/p2p/" not in s:
        raise argparse.ArgumentTypeError(f"expected a multiaddr like /ip4/1.2.3.4/tcp/31337/p2p/Qm..., got {s!r}")
    return s


def add_network_args(p: argparse.ArgumentParser, initial_required: bool = False) -> None:
    g = p.add_argument_group("network")
    g.add_argument("--initial-peers", type=_maddr, action="append", default=[],
                   help="multiaddr of a peer or bootstrap node to join through (repeatable)" + ("; required, here or in --initial-peers-file" if initial_required else ""))
    g.add_argument("--initial-peers-file", default=None, help="file with more such multiaddrs, one a line (what `onebyte bootstrap --maddrs-file` writes)")
    g.add_argument("--host-maddrs", action="append", default=None, help="multiaddrs to listen on (default: /ip4/127.0.0.1/tcp/0)")
    g.add_argument("--announce-maddrs", action="append", default=None, help="multiaddrs others should use to reach this node")
    p.set_defaults(needs_initial_peers=initial_required)


def add_nat_args(p: argparse.ArgumentParser, client_mode: bool = True) -> None:
    """How this node deals with NAT (hivemind's options, see deploy/VOLUNTEER.md)."""
    g = p.add_argument_group("NAT and relays")
    if client_mode:
        g.add_argument("--client-mode", action="store_true",
                       help="a DHT client: reaches others, is reached by none (behind NAT with no open port); needs reachable peers or a bootstrap node")
    g.add_argument("--use-auto-relay", action="store_true", help="behind NAT: find libp2p relays among the peers and become reachable through them")
    g.add_argument("--no-relay", action="store_true", help="do not use libp2p circuit relays at all (hivemind uses them by default)")


def _dht_options(args: argparse.Namespace) -> dict:
    """The NAT options as keyword arguments of start_dht."""
    out = {}
    if getattr(args, "client_mode", False):
        out["client_mode"] = True
    if getattr(args, "use_auto_relay", False):
        out["use_auto_relay"] = True
    if getattr(args, "no_relay", False):
        out["use_relay"] = False
    return out


def _read_initial_peers_file(path: str) -> list[str]:
    out = []
    for line in open(path).read().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                out.append(_maddr(line))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"{path}: {e}") from None
    return out


def _run_id(s: str) -> str:
    """An argparse type: a run id as the manifest allows it."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", s):
        raise argparse.ArgumentTypeError(f"{s!r}: a run id is 1 to 128 letters, digits, '.', '_' or '-'")
    return s


def _public_key(s: str) -> str:
    """An argparse type: a peer's public key as `onebyte identity` prints it."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", s):
        raise argparse.ArgumentTypeError(f"{s[:20]!r}: expected a public key of 64 hex characters (`onebyte identity` prints one)")
    return s.lower()


def _output_path(path: str) -> str:
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


def _allowlist(path: str) -> list[str]:
    """An argparse type: a file of peer public keys (64 hex characters per line)."""
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror}") from None
    keys = sorted({line.split("#")[0].strip().lower() for line in lines} - {""})
    bad = [k for k in keys if not re.fullmatch(r"[0-9a-f]{64}", k)]
    if bad or not keys or len(keys) > 64:
        raise argparse.ArgumentTypeError(f"{path}: expected 1..64 public keys of 64 hex characters, one per line" + (f"; bad: {bad[0][:20]!r}" if bad else ""))
    return keys


def add_swarm_setting_args(p: argparse.ArgumentParser) -> None:
    """Settings of the run: taken from its manifest unless given; a given one must match it."""
    g = p.add_argument_group("run settings (agreed by all peers; default: the run's manifest)")
    g.add_argument("--model", default=None, help="built-in name (smollm2-135m, tiny-llama, tiny-gpt2), local folder or hub name")
    g.add_argument("--model-kind", default=None, choices=["causal-lm", "seq-cls"])
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    g.add_argument("--dataset", default=None, help="built-in (mr, trec, drugreview), local file/folder or hub name")
    g.add_argument("--task", choices=["classification", "lm"], default=None)
    g.add_argument("--text-column", default=None)
    g.add_argument("--label-column", default=None)
    g.add_argument("--label-words", default=None, help="comma-separated label words in label order")
    g.add_argument("--template", default=None)
    g.add_argument("--max-length", type=_positive_int, default=None)
    g.add_argument("--trainable", default=None, help="regex over parameter names to train")
    g.add_argument("--init-seed", type=_nonneg_int, default=None)
    g.add_argument("--lr", type=_positive_float, default=None)
    g.add_argument("--eps", type=_positive_float, default=None)
    g.add_argument("--weight-decay", type=_nonneg_float, default=None)
    g.add_argument("--codec", default=None, help="'log8:<min_exp>:<steps_per_octave>' or 'float32'")
    g.add_argument("--table-log2", type=_positive_int, default=None)
    g.add_argument("--directions", type=_directions, default=None, help="'dense' (protocol v1, the default) or 'lowrank:<r>' (protocol v2)")
    g.add_argument("--contribs-per-round", type=_positive_int, default=None, help="most contributions one peer makes per round")
    g.add_argument("--round-seconds", type=_positive_float, default=None, help="round length in seconds")
    g.add_argument("--lean-replicas", type=_nonneg_int, default=None,
                   help="store/read round records on this many nearest DHT nodes without crawling (0 = hivemind's crawl; default 0)")
    g.add_argument("--hash-every", type=_positive_int, default=None, help="publish and compare weight hashes every this many rounds (default: about every 60 s)")
    g.add_argument("--allowed-peers", type=_allowlist, default=None, metavar="FILE",
                   help="private run: only the public keys in FILE (hex, one per line, # comments) may contribute (at most 64)")
    g.add_argument("--max-round-contributions", type=_positive_int, default=None,
                   help="robust rule (PROTOCOL §15): at most this many contributions count per round (bounds apply work); default: no cap")
    g.add_argument("--clip-abs", type=_positive_float, default=None, help="robust rule: clip every decoded |g| to this value (default: none)")
    g.add_argument("--clip-median", type=_positive_float, default=None,
                   help="robust rule: clip every decoded |g| to this multiple of the round's median |g| (default: none)")


def cmd_bootstrap(args: argparse.Namespace) -> int:
    import threading
    import time

    from onebyte import PROTOCOL_VERSION
    from onebyte.dht.client import start_dht
    from onebyte.dht.identity import Identity

    metrics = None
    if args.metrics_port is not None:
        from onebyte.metrics.bootstrap import BootstrapMetrics

        metrics = BootstrapMetrics()
        metrics.serve(args.metrics_port)
    dht = start_dht(Identity(), args.initial_peers, host_maddrs=args.host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
                    announce_maddrs=args.announce_maddrs, identity_path=args.identity_path, **_dht_options(args))
    try:
        maddrs = [str(a) for a in dht.get_visible_maddrs(latest=True)]
        for a in maddrs:
            print(a, flush=True)
        if args.maddrs_file:
            tmp = Path(args.maddrs_file).with_name(f".{Path(args.maddrs_file).name}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text("".join(a + "\n" for a in maddrs))
            tmp.replace(args.maddrs_file)  # atomic: a reader never sees half a file
        print("bootstrap node running; peers join with --initial-peers ADDR (Ctrl-C to stop)", flush=True)
        if metrics is not None:
            metrics.on_start(version=__version__, protocol_version=PROTOCOL_VERSION, peer_id=str(dht.peer_id))
            metrics.update(dht, maddrs)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        next_refresh = time.monotonic() + 30
        while not stop.wait(5 if metrics is not None else 30):
            if time.monotonic() >= next_refresh:
                maddrs = dht.get_visible_maddrs(latest=True)  # keeps routing fresh, like hivemind-dht
                next_refresh = time.monotonic() + 30
            if metrics is not None:
                metrics.update(dht, maddrs)
    except KeyboardInterrupt:
        pass
    finally:
        dht.shutdown()
    return 0


def _swarm_local(args: argparse.Namespace) -> dict:
    from onebyte.coordinator_free.manifest import AGREED_FIELDS

    local = {k: getattr(args, k) for k in AGREED_FIELDS if hasattr(args, k)}
    local["label_words"] = _label_words(args.label_words)
    return {k: v for k, v in local.items() if v is not None}


def cmd_peer(args: argparse.Namespace) -> int:
    from onebyte.peer.swarm import SwarmConfig, run_peer

    cfg = SwarmConfig(
        run_id=args.run_id, initial_peers=args.initial_peers, new_run=args.new_run, local=_swarm_local(args),
        identity_path=args.identity, host_maddrs=args.host_maddrs or ["/ip4/127.0.0.1/tcp/0"], announce_maddrs=args.announce_maddrs,
        num_replicas=args.num_replicas, device=args.device, batch_size=args.batch_size, shard=args.shard, rounds=args.rounds,
        evaluate=args.evaluate, eval_size=args.eval_size, eval_batch_size=args.eval_batch_size, report=args.report, round_log=args.round_log,
        eval_every=args.eval_every, eval_every_size=args.eval_every_size, max_examples=args.max_examples, population=args.population,
        join_timeout=args.join_timeout, start_delay=args.start_delay, seed=args.seed, threads=args.threads,
        metrics_port=args.metrics_port, dht_options=_dht_options(args),
        checkpoint_dir=args.checkpoint_dir, checkpoint_seconds=args.checkpoint_interval, progress=not args.no_progress, catch_up=args.catch_up,
        run_creator=args.run_creator,
    )
    report = run_peer(cfg)
    print(f"peer {report['peer_id'][:8]}: applied {report['rounds_applied']} rounds, made {report['contributions_made']} contributions, "
          f"weights sha256 {report['final_sha256']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from onebyte.peer.demo import DemoConfig, run_demo

    passthrough = []
    for k, v in _swarm_local(args).items():
        flag = "--" + k.replace("_", "-")
        passthrough += [flag, ",".join(v) if isinstance(v, list) else str(v)]
    for flag, v in (("--device", args.device), ("--batch-size", args.batch_size), ("--num-replicas", args.num_replicas), ("--max-examples", args.max_examples)):
        if v is not None:
            passthrough += [flag, str(v)]
    report = run_demo(DemoConfig(peers=args.peers, rounds=args.rounds, run_id=args.run_id, workdir=args.workdir, report=args.report,
                                 peer_args=passthrough, eval_size=args.eval_size, progress=not args.no_progress,
                                 metrics_port=args.metrics_port,
                                 first_peer_args=[*([] if args.start_delay is None else ["--start-delay", str(args.start_delay)]),
                                                  *([] if args.eval_every is None else ["--eval-every", str(args.eval_every)]),
                                                  *([] if args.eval_every_size is None else ["--eval-every-size", str(args.eval_every_size)])]))
    print(f"demo: {args.peers} peers, {args.rounds} rounds, {report['contributions_total']} contributions; "
          f"hashes {'all equal' if report['all_hashes_equal'] else 'DIFFER'}; {eval_summary(report['eval_before'], report['eval_after'])}")
    return 0 if report["all_hashes_equal"] else 1


def _trained(args: argparse.Namespace):
    """The model to export or evaluate: from --checkpoint, or caught up from a live run."""
    from onebyte.peer import export

    if args.checkpoint:
        return export.from_checkpoint(args.checkpoint, run_id=args.run_id, model=args.model, device=args.device)
    from onebyte.peer.swarm import SwarmConfig

    if not args.run_id or not args.initial_peers:
        raise ValueError("say where the model comes from: --checkpoint FILE_OR_DIR, or --run-id with --initial-peers for a live run")
    cfg = SwarmConfig(run_id=args.run_id, initial_peers=args.initial_peers, run_creator=args.run_creator, device=args.device,
                      progress=False, host_maddrs=args.host_maddrs or ["/ip4/127.0.0.1/tcp/0"], announce_maddrs=args.announce_maddrs,
                      dht_options=_dht_options(args), join_timeout=args.join_timeout)
    return export.from_live_run(cfg)


def cmd_export(args: argparse.Namespace) -> int:
    from onebyte.tasks.export import save_pretrained_folder

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before minutes of loading or catching up
        raise ValueError(f"output folder {out} already exists and is not empty; choose a new folder")
    trained = _trained(args)
    info = {**trained.info, "onebyte_version": __version__, "task": trained.task, "manifest": trained.manifest.model_dump() if trained.manifest else None}
    folder = save_pretrained_folder(trained.loaded, out, info)
    print(f"exported {trained.info['model']} at round {trained.info['round']} of run {trained.info.get('run_id')} "
          f"(weights sha256 {trained.info['sha256']}) to {folder}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from onebyte.tasks import load_model, load_task

    from onebyte.peer.train import TASK_FIELDS

    if args.checkpoint or args.run_id:
        trained = _trained(args)
        loaded, source, task_args = trained.loaded, trained.info, dict(trained.task)
    else:
        if not args.model:
            raise ValueError("say what to evaluate: a model folder or name, --checkpoint, or --run-id with --initial-peers")
        loaded, source = load_model(args.model, kind=args.model_kind, device=args.device), {"source": "model", "model": args.model}
        export_info = Path(args.model, "onebyte_export.json")  # an exported folder remembers its run's task
        task_args = {k: v for k, v in (json.loads(export_info.read_text()).get("task") or {}).items() if k in TASK_FIELDS} if export_info.is_file() else {}
    # the task as the run defined it, unless given on the command line
    for k in ("dataset", "task", "text_column", "label_column", "template", "max_length"):
        if getattr(args, k) is not None:
            task_args[k] = getattr(args, k)
    if args.label_words is not None:
        task_args["label_words"] = _label_words(args.label_words)
    task_args.setdefault("dataset", DEFAULT_DATASET)
    task = load_task(task_args.pop("dataset"), tokenizer=loaded.tokenizer, split_seed=args.seed, **{k: v for k, v in task_args.items() if v is not None})
    result = {"source": source, "task": task.describe(), **task.evaluate(loaded, batch_size=args.eval_batch_size, limit=args.eval_size)}
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    rows = [("examples", result["n"]), ("loss", result["loss"])]
    rows += [(k.replace("_", " "), result[k]) for k in ("accuracy", "balanced_accuracy", "bias_line_accuracy", "bias_line_balanced_accuracy") if k in result]
    print(f"{source.get('model')} on {task.describe()['dataset']} ({'round ' + str(source['round']) + ' of run ' + str(source.get('run_id')) if 'round' in source else source['source']})")
    for k, v in rows:
        print(f"  {k:<28} {v:.4f}" if isinstance(v, float) else f"  {k:<28} {v}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from onebyte.dht.client import RecordClient, start_dht
    from onebyte.dht.identity import Identity

    from onebyte.dht.client import DHTUnavailable
    from onebyte.dht.wire import clip

    ident = Identity()
    dht = start_dht(ident, args.initial_peers, client_mode=True)
    try:
        runs: dict[str, dict] = {}
        client = RecordClient(dht, ident)
        try:
            announced = client.read_runs()
        except DHTUnavailable as e:
            print(f"onebyte runs: error: the run list could not be read: {e}", file=sys.stderr)
            return 1
        _report_rejected("runs", client)
        for peer, ann in announced.items():
            r = runs.setdefault(clip(ann.run_id, 28), {"model": clip(ann.model, 24), "task": clip(ann.task, 16), "round": -1, "peers": 0})
            r["round"] = max(r["round"], ann.round)
            r["peers"] += 1
        if not runs:
            print("no runs visible")
        else:
            print(f"{'RUN':<28} {'MODEL':<24} {'TASK':<16} {'ROUND':>6} {'PEERS':>5}")
            for run_id, r in sorted(runs.items()):
                print(f"{run_id:<28} {r['model']:<24} {r['task']:<16} {r['round']:>6} {r['peers']:>5}")
    finally:
        dht.shutdown()
    return 0


def _report_rejected(command: str, client) -> None:
    """One line on stderr for records that were dropped (malformed, too deep, extension types ...)."""
    if client.rejected:
        print(f"onebyte {command}: ignored {sum(client.rejected.values())} malformed record(s): "
              + ", ".join(f"{n} {k}" for k, n in sorted(client.rejected.items())), file=sys.stderr)


def cmd_identity(args: argparse.Namespace) -> int:
    from onebyte.dht.identity import Identity

    print(Identity.load_or_create(args.identity).peer_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from onebyte.coordinator_free.manifest import RunManifest
    from onebyte.dht.client import RecordClient, start_dht
    from onebyte.dht.identity import Identity

    from onebyte.dht.client import DHTUnavailable
    from onebyte.dht.wire import clip

    ident = Identity()
    dht = start_dht(ident, args.initial_peers, client_mode=True)
    try:
        client = RecordClient(dht, ident)
        try:
            peers = client.read_peers(args.run_id)
            manifests = client.read_manifests(args.run_id, lambda v: RunManifest(**v))
        except DHTUnavailable as e:
            print(f"onebyte status: error: run {args.run_id!r} could not be read: {e}", file=sys.stderr)
            return 1
        _report_rejected("status", client)
    finally:
        dht.shutdown()
    for creator, m in sorted(manifests.items(), key=lambda kv: (kv[1].created_at, kv[0])):
        try:
            created = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(m.created_at)) + " UTC"
        except (OverflowError, ValueError, OSError):  # a manifest's own claim, anything
            created = f"at {m.created_at!r}"
        print(f"manifest by {creator} created {created}: {clip(m.model, 64)}, lr {m.lr:g}, "
              f"{m.round_seconds:g}s rounds")
    if len(manifests) > 1:
        print(f"{len(manifests)} manifests claim this run id: peers take the earliest unless started with --run-creator KEY")
    if not peers:
        print(f"no live peers in run {args.run_id!r}")
        return 1
    print(f"{'PEER':<18} {'ROUND':>6} {'HASH':<14} {'MADE':>7} {'RATE/s':>7} {'VERSION':<10}")
    for peer_id, hb in sorted(peers.items(), key=lambda kv: (-kv[1].round, kv[0])):
        print(f"{peer_id[:16]:<18} {hb.round:>6} {clip(hb.sha256[:12], 12) or '-':<14} {hb.made:>7} {hb.rate:>7.3f} {clip(hb.version, 32):<10}")
    rounds = {hb.round for hb in peers.values()}
    print(f"{len(peers)} live peer(s), rounds {min(rounds)}..{max(rounds)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onebyte", description="Decentralized zeroth-order fine-tuning, about one byte per gradient.")
    parser.add_argument("--version", action="version", version=f"onebyte {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("ONEBYTE_LOG_LEVEL", "INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train on one peer, no network", description="Train on one peer with no network (the embedded default unless told otherwise).")
    add_model_data_args(p)
    add_optim_args(p)
    p.add_argument("--steps", type=_positive_int, default=100, help="steps to run (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="write the trained weights here (safetensors, atomic)")
    p.add_argument("--report", type=_output_path, default=None, help="write a JSON summary here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bootstrap", help="run a DHT node that peers join through", description="Run a DHT node; prints the multiaddrs peers pass as --initial-peers.")
    add_network_args(p)
    p.add_argument("--identity-path", default=None, help="libp2p identity file: keeps this node's address stable across restarts")
    p.add_argument("--maddrs-file", type=_output_path, default=None, help="also write the multiaddrs here, one a line (peers read it with --initial-peers-file)")
    p.add_argument("--metrics-port", type=_positive_int, default=None, help="serve Prometheus metrics on this port (default: off)")
    add_nat_args(p, client_mode=False)
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("peer", help="join a run and train with the swarm", description="Join (or with --new-run create) a run and train with its peers.")
    p.add_argument("--run-id", required=True, type=_run_id, help="name of the run (letters, digits, . _ -)")
    p.add_argument("--new-run", action="store_true", help="create the run if it does not exist yet, with these settings")
    p.add_argument("--run-creator", type=_public_key, default=None, metavar="KEY",
                   help="only the manifest published by this key is the run's (guards against a backdated manifest under the same run id)")
    add_network_args(p)
    add_swarm_setting_args(p)
    g = p.add_argument_group("this peer")
    g.add_argument("--identity", default=None, help="file with this peer's signing key (created if missing); default: a new key each start")
    g.add_argument("--device", default="cpu")
    g.add_argument("--batch-size", type=_positive_int, default=16, help="examples per contribution (default: %(default)s)")
    g.add_argument("--shard", type=_shard, default=(0, 1), help="train on shard I of N of the training data (default: 0/1)")
    g.add_argument("--max-examples", type=_positive_int, default=None, help="train on at most this many examples of the shard, chosen by hash (default: all)")
    g.add_argument("--population", type=_positive_int, default=1, metavar="K",
                   help="evaluate K contributions (2K perturbed passes, each on its own batch) in one batched forward: low-rank runs only, "
                        "others make them one by one; a GPU peer should fill its batch (default: %(default)s)")
    g.add_argument("--rounds", type=_positive_int, default=None, help="leave after applying this many rounds (default: run until Ctrl-C)")
    g.add_argument("--evaluate", action="store_true", help="evaluate on held-out data before and after")
    g.add_argument("--eval-size", type=_positive_int, default=None)
    g.add_argument("--eval-batch-size", type=_positive_int, default=16)
    g.add_argument("--eval-every", type=_positive_int, default=None, metavar="ROUNDS",
                   help="score a small fixed held-out subset after every ROUNDS rounds (metrics, round log, report): the learning curve")
    g.add_argument("--eval-every-size", type=_positive_int, default=128, help="held-out examples in that subset (default: %(default)s)")
    g.add_argument("--report", type=_output_path, default=None, help="write a JSON summary here when leaving")
    g.add_argument("--round-log", type=_output_path, default=None, help="append one JSON line per applied round here")
    g.add_argument("--checkpoint-dir", default=None, help="keep checkpoints and the seed log here; a restart resumes from them, and other peers catch up from them")
    g.add_argument("--checkpoint-interval", type=_nonneg_float, default=120.0, help="seconds between checkpoints, taken at hash rounds (default: %(default)s)")
    g.add_argument("--catch-up", choices=["auto", "log", "checkpoint"], default="auto",
                   help="how to catch up when behind: the cheaper by estimate, only peers' seed logs, or only checkpoints (default: %(default)s)")
    g.add_argument("--num-replicas", type=_positive_int, default=None, help="DHT replication factor (default: hivemind's)")
    g.add_argument("--join-timeout", type=_positive_float, default=120.0, help="seconds to wait for the run's manifest")
    g.add_argument("--start-delay", type=_nonneg_float, default=20.0, help="with --new-run: seconds until round 0")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="data order seed")
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--metrics-port", type=_positive_int, default=None, help="serve Prometheus metrics on this port (default: off)")
    add_nat_args(p)
    p.set_defaults(func=cmd_peer)

    p = sub.add_parser("demo", help="a local swarm: bootstrap node + N peers on loopback", description="Start a bootstrap node and N peer processes on loopback, train, evaluate and summarize.")
    p.add_argument("--peers", type=_positive_int, default=4)
    p.add_argument("--rounds", type=_positive_int, default=30)
    p.add_argument("--run-id", type=_run_id, default=None)
    p.add_argument("--workdir", default=None, help="folder for logs and per-peer reports (default: a temporary folder)")
    p.add_argument("--report", type=_output_path, default=None, help="write the JSON summary here")
    add_swarm_setting_args(p)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--max-examples", type=_positive_int, default=None, help="each peer trains on at most this many examples of its shard")
    p.add_argument("--num-replicas", type=_positive_int, default=None)
    p.add_argument("--eval-size", type=_positive_int, default=None, help="held-out examples to evaluate (default: all)")
    p.add_argument("--eval-every", type=_positive_int, default=None, metavar="ROUNDS", help="the first peer also scores a small held-out subset every ROUNDS rounds")
    p.add_argument("--eval-every-size", type=_positive_int, default=None, help="held-out examples in that subset (default: the peer's, 128)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--metrics-port", type=_positive_int, default=None, help="serve Prometheus metrics: peer i on this port + i (default: off)")
    p.add_argument("--start-delay", type=_nonneg_float, default=None, help="seconds from creating the run to its round 0 (default: the peer's, 20)")
    p.set_defaults(func=cmd_demo)

    def add_source_args(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("where the model comes from (one of)")
        g.add_argument("--checkpoint", default=None, help="a checkpoint file, or a peer's --checkpoint-dir (its newest intact checkpoint)")
        g.add_argument("--run-id", type=_run_id, default=None, help="with --checkpoint: the run to take in a folder of several; "
                       "without: a live run to catch up with first (needs --initial-peers)")
        g.add_argument("--run-creator", type=_public_key, default=None, metavar="KEY", help="a live run: only this key's manifest counts")
        g.add_argument("--join-timeout", type=_positive_float, default=120.0, help="a live run: seconds to wait for its manifest")
        g.add_argument("--device", default="cpu")
        add_network_args(p)
        add_nat_args(p)

    p = sub.add_parser("export", help="write a trained model as a Hugging Face folder",
                       description="Write the model of a checkpoint, a checkpoint directory or a live run as a standard Hugging Face folder "
                                   "(config, safetensors weights, tokenizer, generation config) that from_pretrained and pipeline load.")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--model", default=None, help="the base model, when a checkpoint does not name it")
    add_source_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="score a checkpoint, an exported folder or a model on a task",
                       description="Held-out accuracy, balanced accuracy, loss and the bias-only line (the best a per-class shift of the "
                                   "label-word scores alone reaches) of a checkpoint, a live run, an exported folder or a hub model.")
    p.add_argument("model", nargs="?", default=None, help="a model folder (e.g. from onebyte export), built-in name or hub id")
    p.add_argument("--model-kind", default="causal-lm", choices=["causal-lm", "seq-cls"])
    add_source_args(p)
    g = p.add_argument_group("the task (default: the run's, else the built-in default)")
    g.add_argument("--dataset", default=None, help="built-in (mr, trec, drugreview), local file/folder or hub name")
    g.add_argument("--task", choices=["classification", "lm"], default=None)
    g.add_argument("--text-column", default=None)
    g.add_argument("--label-column", default=None)
    g.add_argument("--label-words", default=None, help="comma-separated label words, in label order")
    g.add_argument("--template", default=None, help="prompt template with {text}")
    g.add_argument("--max-length", type=_positive_int, default=None)
    g.add_argument("--seed", type=_nonneg_int, default=0, help="split seed for datasets that are split by hash")
    g.add_argument("--eval-size", type=_positive_int, default=None, help="held-out examples (default: all)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("runs", help="list the runs visible in a swarm", description="List runs visible in the swarm: id, model, task, round, live peers.")
    add_network_args(p, initial_required=True)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("status", help="list the live peers of a run", description="Live peers of a run: round, last weight hash, contributions made and rate, version.")
    p.add_argument("--run-id", required=True, type=_run_id)
    add_network_args(p, initial_required=True)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("identity", help="print (creating if needed) a peer's public key",
                       description="Print the public key of the signing key in FILE, creating the key if FILE does not exist. "
                                   "This is the peer id others see, and what a private run's --allowed-peers file lists.")
    p.add_argument("--identity", required=True, metavar="FILE", help="the key file `onebyte peer --identity` uses")
    p.set_defaults(func=cmd_identity)

    p = sub.add_parser("plot", help="PNG charts of a run from its report and round logs",
                       description="Charts (loss, accuracy, contributions, latency, bytes per contribution) from `onebyte demo --report` "
                                   "reports, `onebyte peer --round-log` files, demo workdirs or bench/wire_bytes results.")
    p.add_argument("inputs", nargs="+", help="report JSON, round log (JSON lines), a demo's workdir, or a wire_bytes benchmark JSON")
    p.add_argument("--out", default="plots", help="folder for the PNG files (default: %(default)s)")
    p.add_argument("--title", default=None, help="title over the overview chart")
    p.add_argument("--smooth", type=_positive_int, default=5, help="rounds in the moving average of the train loss (default: %(default)s)")
    p.set_defaults(func=cmd_plot)
    add_config_option(parser)
    return parser


def cmd_plot(args: argparse.Namespace) -> int:
    from onebyte.metrics.plot import plot

    written = plot(args.inputs, args.out, title=args.title, smooth=args.smooth)
    for path in written:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    from onebyte.peer.config import ConfigError, apply_config

    parser = build_parser()
    try:  # precedence: command line > ONEBYTE_<OPTION> variables > --config file > defaults
        apply_config(parser, sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as e:
        print(f"onebyte: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if getattr(args, "initial_peers_file", None):
        try:
            args.initial_peers = [*args.initial_peers, *_read_initial_peers_file(args.initial_peers_file)]
        except (OSError, ValueError) as e:
            print(f"onebyte {args.command}: error: --initial-peers-file: {e}", file=sys.stderr)
            return 2
    if getattr(args, "needs_initial_peers", False) and not args.initial_peers:
        parser.error(f"{args.command}: --initial-peers (or --initial-peers-file) is required")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
