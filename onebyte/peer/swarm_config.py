"""A swarm peer's own settings (not agreed with the run) and the defaults of a new run's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from onebyte.tasks.builtin import DEFAULT_DATASET


@dataclass
class SwarmConfig:
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
    join_timeout: float = 60.0
    start_delay: float = 10.0  # for a new run: seconds until round 0 opens
    max_lag: int = 1  # contribute only when at most this many rounds behind the newest final round
    seed: int = 0
    threads: int | None = None  # torch CPU threads (several peers on one machine should split the cores)
    progress: bool = True
    metrics_port: int | None = None  # serve Prometheus metrics on this port
    dht_options: dict = field(default_factory=dict)  # NAT options for start_dht: client_mode, use_relay, use_auto_relay
    checkpoint_dir: str | None = None  # checkpoints and the seed log of this peer: resume from here, serve from here
    checkpoint_seconds: float = 120.0  # at most one checkpoint per this many seconds (taken at hash rounds)
    catch_up: str = "auto"  # "auto" (cheapest), "log" (never download checkpoints) or "checkpoint"
    run_creator: str | None = None  # hex public key: only this key's manifest is the run's (PROTOCOL §11)
    follow_only: bool = False  # never contribute; catch up to the newest final round at join time, then leave (onebyte export)
    eval_every: int | None = None  # score a small fixed held-out subset after every this many rounds: the learning curve
    eval_every_size: int = 128
    max_examples: int | None = None  # train on at most this many examples of the shard (this peer's data, not agreed)
    population: int = 1  # contributions evaluated in one batched forward (low-rank runs; a GPU peer fills its batch)


def default_manifest_fields() -> dict:
    return dict(model="smollm2-135m", model_kind="causal-lm", dtype="float32", trainable=None, init_seed=0, dataset=DEFAULT_DATASET,
                task=None, text_column="text", label_column="label", label_words=None, template=None, max_length=64,
                lr=1e-5, eps=1e-3, weight_decay=0.0, codec="log8:-8:8", table_log2=25, directions="dense", contribs_per_round=4, round_seconds=30.0,
                hash_every=None, lean_replicas=0, allowed_peers=None, max_round_contributions=None, clip_abs=None, clip_median=None)
