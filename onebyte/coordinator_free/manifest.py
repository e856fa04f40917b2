"""The run manifest: the settings every replica must share, published once by the run's creator.

Replicas stay identical only if every peer uses the same model, initial weights, trainable set,
noise table, codec, lr, rounds and contributions per round. The creator stores this manifest
(signed, see onebyte.dht.validator); a joiner adopts it and refuses local settings that
conflict. Settings that only affect a peer's own estimate (device, batch size, its data shard)
are deliberately not part of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from onebyte import SUPPORTED_PROTOCOL_VERSIONS, settings
from onebyte.settings import PeerKey, agreed
from onebyte.zo.directions import Directions
from onebyte.zo.optim import OPTIMIZERS, protocol_version

# what this peer speaks; a manifest asking for anything else is refused in one line (PROTOCOL §16.6)
SUPPORTED_VERSIONS = SUPPORTED_PROTOCOL_VERSIONS
SUPPORTED_DIRECTIONS = ("dense", "lowrank")

# manifest fields a peer may also set on its command line; anything else is the manifest's alone
AGREED_FIELDS = settings.AGREED_FIELDS


class RunManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol_version: int = 1  # 1: dense directions; 2: low-rank; 3: a stateful optimizer (must match both)
    run_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    created_at: float
    start_time: float  # round 0 opens here
    round_seconds: float = agreed("round_seconds", required=True)
    publish_margin: float = Field(ge=0)
    settle_seconds: float = Field(ge=0)
    hash_every: int = agreed("hash_every", required=True)
    # the model and what is trained
    model: str = agreed("model", required=True)
    model_kind: str = agreed("model_kind")
    dtype: str = agreed("dtype")
    trainable: str | None = agreed("trainable")
    # tensors known by several names (tied embeddings): {the name it is trained and hashed under: [its
    # other names, sorted]}, as the creator's model had them (docs/PROTOCOL.md §1); None = not recorded
    # (runs created before this field)
    ties: dict[str, list[str]] | None = None
    init_seed: int = agreed("init_seed")
    initial_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # the task (each peer trains on its own data, but scoring must mean the same thing)
    dataset: str = agreed("dataset", required=True)
    task: str | None = agreed("task")
    text_column: str = agreed("text_column")
    label_column: str = agreed("label_column")
    label_words: list[str] | None = agreed("label_words")
    template: str | None = agreed("template")
    max_length: int = agreed("max_length", required=True)
    task_description: dict = Field(default_factory=dict)
    # the update rule (these fields' meaning, checks and defaults: onebyte/settings.py)
    lr: float = agreed("lr", required=True)
    eps: float = agreed("eps", required=True)
    weight_decay: float = agreed("weight_decay", required=True)
    codec: str = agreed("codec")
    table_log2: int = agreed("table_log2", required=True)
    table_key: int = 0
    # direction family: 'dense' (protocol v1) or 'lowrank:r' (v2); absent from v1 manifests
    directions: str = agreed("directions")
    # the update rule: 'sgd' (v1/v2) or a stateful rule (v3, §17) with its constants; absent from v1/v2 manifests
    optimizer: str = agreed("optimizer")
    beta1: float = agreed("beta1")
    beta2: float = agreed("beta2")
    optim_eps: float = agreed("optim_eps")
    contribs_per_round: int = agreed("contribs_per_round", required=True)
    lean_replicas: int = agreed("lean_replicas")
    allowed_peers: list[PeerKey] | None = agreed("allowed_peers")
    max_round_contributions: int | None = agreed("max_round_contributions")  # the robust rule (PROTOCOL §15)
    clip_abs: float | None = agreed("clip_abs")
    clip_median: float | None = agreed("clip_median")
    seniority_window: int | None = agreed("seniority_window")  # admission by seniority (PROTOCOL §15)
    max_new_contributions: int | None = agreed("max_new_contributions")

    @property
    def rule(self):
        from onebyte.coordinator_free.agreement import RobustRule

        return RobustRule(
            self.max_round_contributions,
            self.clip_abs,
            self.clip_median,
            self.seniority_window,
            self.max_new_contributions,
        )

    @model_validator(mode="after")
    def _seniority_needs_a_cap(self) -> RunManifest:
        if (self.seniority_window is None) != (self.max_new_contributions is None):
            raise ValueError("seniority_window and max_new_contributions go together")
        if self.seniority_window is not None and not (
            self.max_round_contributions is not None
            and self.contribs_per_round <= self.max_new_contributions <= self.max_round_contributions
        ):
            raise ValueError(
                "admission by seniority needs contribs_per_round <= max_new_contributions <= max_round_contributions"
            )
        return self

    @model_validator(mode="after")
    def _directions_match_version(self) -> RunManifest:
        Directions.parse(self.directions)
        want = protocol_version(self.directions, self.optimizer)
        if self.protocol_version != want:
            raise ValueError(
                f"directions {self.directions!r} with optimizer {self.optimizer!r} belong to protocol version "
                f"{want}, not {self.protocol_version}"
            )
        return self

    def record(self) -> dict:
        """The value stored in the DHT: a v1 (dense) manifest has no `directions` field, and no
        robust-rule field that is unset, so peers that only speak v1 read it as before."""
        out = self.model_dump()
        if self.directions == "dense":
            out.pop("directions")
        if self.optimizer == "sgd":  # v1/v2's rule: no optimizer fields, so older peers read it as before
            for k in ("optimizer", "beta1", "beta2", "optim_eps"):
                out.pop(k)
        for k in (
            "max_round_contributions",
            "clip_abs",
            "clip_median",
            "seniority_window",
            "max_new_contributions",
        ):  # the robust rule (§15): absent when unset, as in v1
            if out[k] is None:
                out.pop(k)
        return out

    def conflicts(self, local: dict) -> list[str]:
        """Human-readable differences between this manifest and settings a user passed explicitly."""
        out = []
        for k, v in local.items():
            if k in AGREED_FIELDS and v is not None and getattr(self, k) != v:
                out.append(f"{k}: run has {getattr(self, k)!r}, you passed {v!r}")
        return out


settings.check_agreed(RunManifest)


def tied_names(named: Iterable[tuple[str, object]], trainable: Iterable[str]) -> dict[str, list[str]]:
    """The ``ties`` field: for each trainable name whose tensor has other names in ``named`` (all of a
    model's ``named_parameters(remove_duplicate=False)``), those other names, sorted."""
    names_of: dict[int, list[str]] = {}
    by_name = {}
    for name, tensor in named:
        names_of.setdefault(id(tensor), []).append(name)
        by_name[name] = tensor
    out = {}
    for name in trainable:
        others = sorted(set(names_of.get(id(by_name.get(name)), [])) - {name})
        if others:
            out[name] = others
    return out


class UnsupportedManifest:
    """A manifest this peer does not speak (a newer protocol version, direction family or optimizer)."""

    def __init__(self, raw: dict, reason: str):
        self.run_id, self.reason = raw.get("run_id"), reason
        self.created_at = raw.get("created_at") if isinstance(raw.get("created_at"), (int, float)) else float("inf")


def unsupported_reason(raw) -> str | None:
    """Why this peer cannot take part in the run of manifest ``raw`` (its stored dict), or None."""
    if not isinstance(raw, dict):
        return None
    unknown = sorted(set(raw) - set(RunManifest.model_fields))
    if unknown and all(isinstance(k, str) and k.isidentifier() and len(k) <= 64 for k in unknown):
        return f"manifest field(s) {', '.join(map(repr, unknown[:4]))} that this peer does not know"
    version, directions = raw.get("protocol_version", 1), raw.get("directions", "dense")
    if version not in SUPPORTED_VERSIONS:
        return f"protocol version {version!r}"
    if str(directions).split(":")[0] not in SUPPORTED_DIRECTIONS:
        return f"directions {directions!r} (protocol version {version!r})"
    optimizer = raw.get("optimizer", "sgd")
    if optimizer not in OPTIMIZERS:
        return f"optimizer {optimizer!r} (protocol version {version!r})"
    return None


def parse_manifest(raw) -> RunManifest | UnsupportedManifest:
    """A manifest from the DHT; one in a protocol this peer does not speak is kept aside, not
    counted as malformed, so that joining its run can be refused with the reason."""
    reason = unsupported_reason(raw)
    return UnsupportedManifest(raw, reason) if reason else RunManifest(**raw)


def refusal(run_id: str, found: dict) -> str | None:
    """The one-line refusal when the run's only manifests are in a protocol this peer does not speak."""
    other = [m for m in found.values() if isinstance(m, UnsupportedManifest) and m.run_id == run_id]
    if not other:
        return None
    speaks = ", ".join(map(str, SUPPORTED_VERSIONS))
    families = ", ".join("lowrank:r" if f == "lowrank" else f for f in SUPPORTED_DIRECTIONS)
    return (
        f"run {run_id!r} uses {min(other, key=lambda m: m.created_at).reason}; this peer speaks protocol "
        f"version(s) {speaks} "
        f"with directions {families}: upgrade onebyte to join it"
    )


def pick_manifest(candidates: dict[str, RunManifest], run_id: str) -> tuple[str, RunManifest] | None:
    """If several peers published a manifest for one run id, the earliest (then lowest key) wins."""
    valid = {
        k: m
        for k, m in candidates.items()
        if isinstance(m, RunManifest) and m.run_id == run_id and m.protocol_version in SUPPORTED_VERSIONS
    }
    if not valid:
        return None
    key = min(valid, key=lambda k: (valid[k].created_at, k))
    return key, valid[key]
