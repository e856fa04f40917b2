"""The vocabulary of a run: every setting all replicas must share, with its default, defined once.

Four groups by concern (the model, the task, the update rule, the round). Everything else derives
from these definitions: the run manifest's agreed fields (onebyte.coordinator_free.manifest), the
defaults of a new run, ``TrainConfig``'s run fields, and the command-line options of ``train``,
``peer``, ``demo`` and ``eval`` (onebyte.cli.options reads each field's ``cli`` metadata).

Defaults are the same for ``onebyte train`` and a new swarm run (``onebyte peer --new-run``); the
one difference is the contributions per step: ``train --contribs`` (default 1, not a setting of a
run) versus the run's ``contribs_per_round`` (default 4, below).

A peer's own settings that are not agreed (device, batch size, its shard, ...) are ``SwarmConfig``.
Their command-line defaults are those of ``onebyte peer``; where ``SwarmConfig``'s own default
differs (``join_timeout``, ``start_delay``) it serves library callers and tests.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, Field
from pydantic_core import PydanticUndefined

from onebyte.tasks.builtin import DEFAULT_DATASET

CODEC = "log8:-8:8"  # the default wire code (also Replica's)
# the metrics port the docs, the image and the compose files use (not 9100: node-exporter's, which Debian's
# prometheus package installs and starts on the same host); `--metrics-port` is off unless given
METRICS_PORT = 9737
PeerKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # a peer's Ed25519 public key, hex


def setting(
    default: Any,
    description: str,
    *,
    arg_type: str | None = None,
    choices: list[str] | None = None,
    metavar: str | None = None,
    comma_list: bool = False,
    train: str | None = None,
    run: str | None = None,
    eval: str | None = None,
    **checks,
) -> Any:
    """A run setting: its default, what it means, its checks (pydantic's ``ge``, ``gt``, ...), and how
    the command line offers it: ``arg_type`` (a name in onebyte.cli.options.ARG_TYPES), ``choices``,
    ``metavar``, ``comma_list`` (given as comma-separated text), and its help text in each command
    family: ``train`` (``onebyte train``), ``run`` (``peer``, ``demo``), ``eval``; None = no help."""
    cli = {
        "type": arg_type,
        "choices": choices,
        "metavar": metavar,
        "list": comma_list,
        "train": train,
        "run": run,
        "eval": eval,
    }
    cli = {k: v for k, v in cli.items() if v}
    return Field(default, description=description, json_schema_extra={"cli": cli}, **checks)


class ModelSettings(BaseModel):
    """Which model, in which precision, with which parameters trained."""

    model: str = setting(
        "smollm2-135m",
        "base model: built-in name, local folder or hub name",
        max_length=256,
        train="built-in name (smollm2-135m, tiny-llama, tiny-gpt2), local folder or hub name (default: %(default)s)",
        run="built-in name (smollm2-135m, tiny-llama, tiny-gpt2), local folder or hub name",
    )
    model_kind: str = setting(
        "causal-lm", "head to load", choices=["causal-lm", "seq-cls"], train="head to load (default: %(default)s)"
    )
    dtype: str = setting(
        "float32",
        "weight dtype",
        choices=["float32", "bfloat16", "float16"],
        train="weight dtype (default: %(default)s)",
    )
    trainable: str | None = setting(
        None,
        "regex over parameter names to train; None = all",
        train="regex over parameter names to train (default: all)",
        run="regex over parameter names to train",
    )
    init_seed: int = setting(
        0, "init seed of config-built tiny models", arg_type="nonneg_int", train="init seed of config-built tiny models"
    )


class TaskSettings(BaseModel):
    """What defines a task's examples and scoring (a checkpoint records them: see TASK_FIELDS)."""

    dataset: str = setting(
        DEFAULT_DATASET,
        "built-in task, local file/folder or hub name",
        max_length=512,
        train="built-in (mr, trec, drugreview), local file/folder (csv, tsv, json, jsonl, parquet) or hub name "
        "(default: %(default)s)",
        run="built-in (mr, trec, drugreview), local file/folder or hub name",
        eval="built-in (mr, trec, drugreview), local file/folder or hub name",
    )
    task: str | None = setting(
        None,
        "'classification' or 'lm'; None: classification if the data has labels",
        choices=["classification", "lm"],
        train="prompt classification on label words, or language-model loss",
    )
    text_column: str = setting("text", "column of the input text")
    label_column: str = setting("label", "column of the label")
    label_words: list[str] | None = setting(
        None,
        "label words, in label order",
        comma_list=True,
        train="comma-separated label words, in label order, e.g. ' negative, positive'",
        run="comma-separated label words in label order",
        eval="comma-separated label words, in label order",
    )
    template: str | None = setting(
        None, "prompt template with {text}", train="prompt template with {text}", eval="prompt template with {text}"
    )
    max_length: int = setting(
        64, "tokens per example", ge=1, arg_type="positive_int", train="tokens per example (default: %(default)s)"
    )


class UpdateSettings(BaseModel):
    """The update rule: step size, perturbation, wire code, noise table, direction family."""

    lr: float = setting(
        1e-5, "learning rate", gt=0, arg_type="positive_float", train="learning rate (default: %(default)s)"
    )
    eps: float = setting(
        1e-3,
        "perturbation scale epsilon",
        gt=0,
        arg_type="positive_float",
        train="perturbation scale epsilon (default: %(default)s)",
    )
    weight_decay: float = setting(
        0.0,
        "decoupled weight decay on matrices",
        ge=0,
        arg_type="nonneg_float",
        train="decoupled weight decay on matrices (default: 0)",
    )
    codec: str = setting(
        CODEC,
        "wire code for g",
        train="wire code for g: 'log8:<min_exp>:<steps_per_octave>' or 'float32' (default: %(default)s)",
        run="'log8:<min_exp>:<steps_per_octave>' or 'float32'",
    )
    table_log2: int = setting(
        25,
        "log2 of the noise table size",
        ge=12,
        le=31,
        arg_type="positive_int",
        train="log2 of the noise table size (default: %(default)s)",
    )
    directions: str = setting(
        "dense",
        "direction family: 'dense' (protocol v1) or 'lowrank:r' (v2)",
        arg_type="directions",
        train="perturbation directions: 'dense' (protocol v1) or 'lowrank:<r>' (v2: evaluated inside the forward, "
        "exact one-pass apply) (default: %(default)s)",
        run="'dense' (protocol v1, the default) or 'lowrank:<r>' (protocol v2)",
    )
    # the stateful rules (protocol v3, docs/PROTOCOL.md §17): constants enter the rule as binary32
    optimizer: str = setting(
        "sgd",
        "update rule: 'sgd' (the round's mean times lr), 'nesterov' or 'adam' (protocol v3)",
        choices=["sgd", "nesterov", "adam"],
        train="update rule: 'sgd' (the mean estimate times lr: protocol v1/v2), 'nesterov' or 'adam' (stateful, "
        "protocol v3) (default: %(default)s)",
        run="update rule: 'sgd' (v1/v2), 'nesterov' or 'adam' (stateful: protocol v3)",
    )
    beta1: float = setting(
        0.9,
        "momentum (nesterov) or first-moment decay (adam)",
        ge=0,
        lt=1,
        arg_type="nonneg_float",
        train="momentum (nesterov) or Adam's beta1 (default: %(default)s)",
        run="momentum (nesterov) or Adam's beta1",
    )
    beta2: float = setting(
        0.99,
        "second-moment decay (adam)",
        ge=0,
        lt=1,
        arg_type="nonneg_float",
        train="Adam's beta2 (default: %(default)s)",
        run="Adam's beta2",
    )
    optim_eps: float = setting(
        1e-8,
        "Adam's epsilon",
        gt=0,
        arg_type="positive_float",
        train="Adam's epsilon, added to the root of the second moment (default: %(default)s)",
        run="Adam's epsilon",
    )


class RoundSettings(BaseModel):
    """The swarm's rounds: length, contributions, hashes, record storage, who contributes, the robust rule."""

    contribs_per_round: int = setting(
        4,
        "most contributions one peer makes per round",
        ge=1,
        le=4096,
        arg_type="positive_int",
        run="most contributions one peer makes per round",
    )
    round_seconds: float = setting(
        30.0, "round length in seconds", gt=0, le=86400, arg_type="positive_float", run="round length in seconds"
    )
    hash_every: int | None = setting(
        None,
        "rounds between weight hashes; None = about every 60 s",
        ge=1,
        arg_type="positive_int",
        run="publish and compare weight hashes every this many rounds (default: about every 60 s)",
    )
    # round records: 0 = hivemind's crawling store/get; r > 0 = the r nearest known nodes, no crawl
    lean_replicas: int = setting(
        0,
        "nearest DHT nodes that hold a round's records; 0 = crawl",
        ge=0,
        le=20,
        arg_type="nonneg_int",
        run="store/read round records on this many nearest DHT nodes without crawling "
        "(0 = hivemind's crawl; default 0)",
    )
    # private runs: only these keys may contribute; None = anyone (a public run). At most 64: the
    # manifest is one DHT value (<= 8 KB)
    allowed_peers: list[PeerKey] | None = setting(
        None,
        "public keys that may contribute; None = anyone",
        max_length=64,
        arg_type="allowlist",
        metavar="FILE",
        run="private run: only the public keys in FILE (hex, one per line, # comments) may contribute (at most 64)",
    )
    # the robust round rule (docs/PROTOCOL.md §15); all None = protocol v1's rule, unchanged
    max_round_contributions: int | None = setting(
        None,
        "most contributions that count per round",
        ge=1,
        le=1_000_000,
        arg_type="positive_int",
        run="robust rule (PROTOCOL §15): at most this many contributions count per round (bounds apply work); "
        "default: no cap",
    )
    clip_abs: float | None = setting(
        None,
        "clip every decoded |g| to this value",
        gt=0,
        arg_type="positive_float",
        run="robust rule: clip every decoded |g| to this value (default: none)",
    )
    clip_median: float | None = setting(
        None,
        "clip every decoded |g| to this multiple of the round's median |g|",
        gt=0,
        arg_type="positive_float",
        run="robust rule: clip every decoded |g| to this multiple of the round's median |g| (default: none)",
    )
    # admission by seniority (PROTOCOL §15): with the cap, established keys keep their place in a flood of new ones
    seniority_window: int | None = setting(
        None,
        "rounds of history that give a key seniority",
        ge=1,
        le=4096,
        arg_type="positive_int",
        run="robust rule: a capped round keeps keys by seniority, the rounds of the last N in which they counted "
        "(needs --max-round-contributions and --max-new-contributions; default: off)",
    )
    max_new_contributions: int | None = setting(
        None,
        "most contributions per round from keys without seniority",
        ge=1,
        le=1_000_000,
        arg_type="positive_int",
        run="robust rule: at most this many contributions per round from keys without seniority "
        "(at least --contribs-per-round; default: off)",
    )


GROUPS = (ModelSettings, TaskSettings, UpdateSettings, RoundSettings)
FIELDS = {name: f for group in GROUPS for name, f in group.model_fields.items()}
AGREED_FIELDS = tuple(FIELDS)  # manifest fields a peer may also set on its command line
TASK_FIELDS = tuple(TaskSettings.model_fields)  # a checkpoint records them so `onebyte eval` scores it the same way
# what builds a replica (TrainConfig's run fields)
TRAIN_FIELDS = (*ModelSettings.model_fields, *TaskSettings.model_fields, *UpdateSettings.model_fields)


def default(name: str) -> Any:
    return FIELDS[name].default


def cli_spec(name: str) -> dict:
    """How the command line offers setting ``name`` (see ``setting``)."""
    return FIELDS[name].json_schema_extra["cli"]


def agreed(name: str, required: bool = False):
    """Setting ``name`` as a field of the run manifest: the same checks and meaning; ``required``
    where every manifest carries the field (its default then only serves a new run)."""
    out = copy.copy(FIELDS[name])
    out.json_schema_extra = None
    if required:
        out.default = PydanticUndefined
    return out


def check_agreed(model: type[BaseModel]) -> None:
    """Every setting is a field of ``model`` made by ``agreed`` (guards against a hand-written copy)."""
    for name, f in FIELDS.items():
        got = model.model_fields.get(name)
        if got is None or got.description != f.description or got.metadata != f.metadata:
            raise TypeError(f"{model.__name__}.{name} must be declared as settings.agreed({name!r})")


def default_manifest_fields() -> dict:
    """The settings of a new run where its creator passes none."""
    return {name: default(name) for name in AGREED_FIELDS}


def train_fields(source) -> dict:
    """The settings that build a replica (``TrainConfig``'s run fields), from a dict or a manifest."""
    return _pick(source, TRAIN_FIELDS)


def agreed_fields(source, but: tuple[str, ...] = ()) -> dict:
    """The agreed settings in ``source`` (a dict or a manifest), except ``but``."""
    return _pick(source, tuple(k for k in AGREED_FIELDS if k not in but))


def _pick(source, names: tuple[str, ...]) -> dict:
    get = source.__getitem__ if isinstance(source, dict) else lambda k: getattr(source, k)
    return {k: get(k) for k in names}


# the run settings as dataclass fields with their defaults: the base of onebyte.peer.train.TrainConfig
TrainSettings = dataclasses.make_dataclass(
    "TrainSettings", [(k, FIELDS[k].annotation, field(default=default(k))) for k in TRAIN_FIELDS]
)


@dataclass
class SwarmConfig:
    """A peer's own settings: what it is told on its command line and that no other peer checks."""

    run_id: str
    initial_peers: list[str] = field(default_factory=list)
    new_run: bool = False
    local: dict = field(default_factory=dict)  # agreed settings the user passed explicitly
    identity_path: str | None = None
    host_maddrs: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    announce_maddrs: list[str] | None = None
    num_replicas: int | None = None
    device: str = "cpu"
    batch_size: int = 16
    shard: tuple[int, int] = (0, 1)
    rounds: int | None = None  # stop after applying rounds 0..rounds-1
    evaluate: bool = False
    eval_size: int | None = None
    eval_batch_size: int = 16
    report: str | None = None
    round_log: str | None = None
    join_timeout: float = 60.0  # `onebyte peer`: 120
    start_delay: float = 10.0  # for a new run: seconds until round 0 opens (`onebyte peer`: 20)
    max_lag: int = 1  # contribute only when at most this many rounds behind the newest final round
    seed: int = 0
    threads: int | None = None  # torch CPU threads (several peers on one machine should split the cores)
    progress: bool = True
    metrics_port: int | None = None  # serve Prometheus metrics on this port (documented: METRICS_PORT)
    metrics_host: str = "127.0.0.1"  # ... bound to this address (loopback: this machine only)
    dht_options: dict = field(default_factory=dict)  # NAT options for start_dht: client_mode, use_relay, use_auto_relay
    checkpoint_dir: str | None = None  # checkpoints and the seed log of this peer: resume from here, serve from here
    checkpoint_seconds: float = 120.0  # at most one checkpoint per this many seconds (taken at hash rounds)
    catch_up: str = "auto"  # "auto" (cheapest), "log" (never download checkpoints) or "checkpoint"
    run_creator: str | None = None  # hex public key: only this key's manifest is the run's (PROTOCOL §11)
    # never contribute; catch up to the newest final round at join time, then leave (onebyte export)
    follow_only: bool = False
    eval_every: int | None = None  # score a small fixed held-out subset every this many rounds: the learning curve
    eval_every_size: int = 128
    max_examples: int | None = None  # train on at most this many examples of the shard (this peer's data, not agreed)
    population: int = 1  # contributions evaluated in one batched forward (low-rank runs; a GPU peer fills its batch)


def config_from(cls, values, **given):
    """A dataclass ``cls`` from ``values`` (an argparse namespace or a dict) by field name, then ``given``."""
    values = values if isinstance(values, dict) else vars(values)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names} | given)
