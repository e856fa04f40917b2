"""Commands on one machine's model: ``train`` (no network), ``export`` and ``eval`` (of a checkpoint,
a live run or a model folder), ``plot`` (charts of a run's reports and round logs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onebyte import __version__, settings
from onebyte.cli.options import (
    add_model_data_args,
    add_nat_args,
    add_network_args,
    add_optim_args,
    add_settings,
    dht_options,
    eval_summary,
    given_settings,
    nonneg_int,
    output_path,
    positive_float,
    positive_int,
    public_key,
    run_id,
)


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train on one peer, no network",
        description="Train on one peer with no network (the embedded default unless told otherwise).",
    )
    add_model_data_args(p)
    add_optim_args(p)
    p.add_argument("--steps", type=positive_int, default=100, help="steps to run (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="write the trained weights here (safetensors, atomic)")
    p.add_argument("--report", type=output_path, default=None, help="write a JSON summary here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from onebyte.peer.train import TrainConfig, train
    from onebyte.settings import config_from

    cfg = config_from(TrainConfig, args, **given_settings(args, ["label_words"]), progress=not args.no_progress)
    report = train(cfg)
    print(
        f"trained {report['steps']} steps: {eval_summary(report['eval_before'], report['eval_after'])}; "
        f"weights sha256 {report['final_sha256']}"
    )
    return 0


def _add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the model comes from (one of)")
    g.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint file, or a peer's --checkpoint-dir (its newest intact checkpoint)",
    )
    g.add_argument(
        "--run-id",
        type=run_id,
        default=None,
        help="with --checkpoint: the run to take in a folder of several; "
        "without: a live run to catch up with first (needs --initial-peers)",
    )
    g.add_argument(
        "--run-creator",
        type=public_key,
        default=None,
        metavar="KEY",
        help="a live run: only this key's manifest counts",
    )
    g.add_argument(
        "--join-timeout", type=positive_float, default=120.0, help="a live run: seconds to wait for its manifest"
    )
    g.add_argument("--device", default="cpu")
    add_network_args(p)
    add_nat_args(p)


def add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model as a Hugging Face folder",
        description="Write the model of a checkpoint, a checkpoint directory or a live run as a "
        "standard Hugging Face folder (config, safetensors weights, tokenizer, generation "
        "config) that from_pretrained and pipeline load.",
    )
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--model", default=None, help="the base model, when a checkpoint does not name it")
    _add_source_args(p)
    p.set_defaults(func=cmd_export)


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score a checkpoint, an exported folder or a model on a task",
        description="Held-out accuracy, balanced accuracy, loss and the bias-only line (the best a "
        "per-class shift of the label-word scores alone reaches) of a checkpoint, a live "
        "run, an exported folder or a hub model.",
    )
    p.add_argument(
        "model", nargs="?", default=None, help="a model folder (e.g. from onebyte export), built-in name or hub id"
    )
    p.add_argument(
        "--model-kind", default=settings.default("model_kind"), choices=settings.cli_spec("model_kind")["choices"]
    )
    _add_source_args(p)
    g = p.add_argument_group("the task (default: the run's, else the built-in default)")
    add_settings(g, " ".join(settings.TASK_FIELDS), "eval")
    g.add_argument("--seed", type=nonneg_int, default=0, help="split seed for datasets that are split by hash")
    g.add_argument("--eval-size", type=positive_int, default=None, help="held-out examples (default: all)")
    g.add_argument("--eval-batch-size", type=positive_int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_eval)


def add_plot_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="PNG charts of a run from its report and round logs",
        description="Charts (loss, accuracy, contributions, latency, bytes per contribution) from "
        "`onebyte demo --report` reports, `onebyte peer --round-log` files, demo workdirs "
        "or bench/wire_bytes results.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="report JSON, round log (JSON lines), a demo's workdir, or a wire_bytes benchmark JSON",
    )
    p.add_argument("--out", default="plots", help="folder for the PNG files (default: %(default)s)")
    p.add_argument("--title", default=None, help="title over the overview chart")
    p.add_argument(
        "--smooth",
        type=positive_int,
        default=5,
        help="rounds in the moving average of the train loss (default: %(default)s)",
    )
    p.set_defaults(func=cmd_plot)


def _trained(args: argparse.Namespace):
    """The model to export or evaluate: from --checkpoint, or caught up from a live run."""
    from onebyte.peer import export

    if args.checkpoint:
        return export.from_checkpoint(args.checkpoint, run_id=args.run_id, model=args.model, device=args.device)
    from onebyte.settings import SwarmConfig

    if not args.run_id or not args.initial_peers:
        raise ValueError(
            "say where the model comes from: --checkpoint FILE_OR_DIR, or --run-id with --initial-peers for a live run"
        )
    cfg = SwarmConfig(
        run_id=args.run_id,
        initial_peers=args.initial_peers,
        run_creator=args.run_creator,
        device=args.device,
        progress=False,
        host_maddrs=args.host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
        announce_maddrs=args.announce_maddrs,
        dht_options=dht_options(args),
        join_timeout=args.join_timeout,
    )
    return export.from_live_run(cfg)


def cmd_export(args: argparse.Namespace) -> int:
    from onebyte.tasks.export import save_pretrained_folder

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before minutes of loading or catching up
        raise ValueError(f"output folder {out} already exists and is not empty; choose a new folder")
    trained = _trained(args)
    info = {
        **trained.info,
        "onebyte_version": __version__,
        "task": trained.task,
        "manifest": trained.manifest.model_dump() if trained.manifest else None,
    }
    folder = save_pretrained_folder(trained.loaded, out, info)
    print(
        f"exported {trained.info['model']} at round {trained.info['round']} of run {trained.info.get('run_id')} "
        f"(weights sha256 {trained.info['sha256']}) to {folder}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from onebyte.tasks import load_model, load_task
    from onebyte.tasks.recorded import exported_task, merge_task

    if args.checkpoint or args.run_id:
        trained = _trained(args)
        loaded, source, recorded = trained.loaded, trained.info, dict(trained.task)
    else:
        if not args.model:
            raise ValueError(
                "say what to evaluate: a model folder or name, --checkpoint, or --run-id with --initial-peers"
            )
        loaded = load_model(args.model, kind=args.model_kind, device=args.device)
        source = {"source": "model", "model": args.model}
        recorded = exported_task(args.model)  # an exported folder remembers its run's task
    dataset, task_args = merge_task(recorded, given_settings(args, settings.TASK_FIELDS))
    task = load_task(dataset, tokenizer=loaded.tokenizer, split_seed=args.seed, **task_args)
    scores = task.evaluate(loaded, batch_size=args.eval_batch_size, limit=args.eval_size)
    result = {"source": source, "task": task.describe(), **scores}
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    rows = [("examples", result["n"]), ("loss", result["loss"])]
    shown = ("accuracy", "balanced_accuracy", "bias_line_accuracy", "bias_line_balanced_accuracy")
    rows += [(k.replace("_", " "), result[k]) for k in shown if k in result]
    where = f"round {source['round']} of run {source.get('run_id')}" if "round" in source else source["source"]
    print(f"{source.get('model')} on {task.describe()['dataset']} ({where})")
    for k, v in rows:
        print(f"  {k:<28} {v:.4f}" if isinstance(v, float) else f"  {k:<28} {v}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from onebyte.metrics.plot import plot

    for path in plot(args.inputs, args.out, title=args.title, smooth=args.smooth):
        print(path)
    return 0
