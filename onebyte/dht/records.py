"""What onebyte stores in the DHT: keys, record schemas and their size limits.

Every record is a subkey ``b"ob1" + public key`` under one of these keys (signed by that key,
see validator.py); values are msgpack. Readers parse every value through these schemas and
count what they reject by reason instead of raising: one bad record never stops a peer. Before a
schema sees a value, onebyte.dht.wire checks it is made of plain types with bounded depth and size.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from onebyte.dht import wire
from onebyte.dht.validator import MAX_VALUE_BYTES, subkey_owner

RUNS_KEY = "onebyte/v1/runs"


def round_key(run_id: str, round_: int) -> str:
    return f"onebyte/v1/{run_id}/round/{round_}"


def hash_key(run_id: str, round_: int) -> str:
    return f"onebyte/v1/{run_id}/hash/{round_}"


def peers_key(run_id: str) -> str:
    return f"onebyte/v1/{run_id}/peers"


def manifest_key(run_id: str) -> str:
    return f"onebyte/v1/{run_id}/manifest"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ContributionRecord(_Strict):
    """One peer's contributions to one round: codes[i] is contribution index i."""

    round: int = Field(ge=0)
    published_at: float
    codes: bytes

    def pack(self) -> list:
        return [1, self.round, self.published_at, self.codes]

    @classmethod
    def unpack(cls, value: Any) -> ContributionRecord:
        # exactly a msgpack array whose first element is the integer 1 (not true, not 1.0): an
        # implementation written from docs/PROTOCOL.md §10.1 must keep the same records
        if not (isinstance(value, list) and len(value) == 4 and type(value[0]) is int and value[0] == 1):
            raise ValueError("not a v1 contribution record")
        return cls(round=value[1], published_at=value[2], codes=value[3])

    @field_validator("published_at")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("published_at must be finite")
        return v


class HashRecord(_Strict):
    """A peer's weight hash after applying ``round``, and the digest of that round's set."""

    round: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    set_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    contributions: int = Field(ge=0)


class Heartbeat(_Strict):
    """Liveness and progress, re-stored every round with a short expiration."""

    version: str = Field(max_length=32)
    round: int = Field(ge=-1)  # last applied round
    sha256: str = Field(max_length=64)  # hash after that round ('' if unknown)
    made: int = Field(ge=0)
    rate: float = Field(ge=0)  # contributions per second, recent
    name: str = Field(default="", max_length=64)
    p2p_id: str = Field(default="", max_length=64)  # libp2p id serving this peer's log and checkpoint (transfer.py)
    p2p_addrs: list[str] = Field(default_factory=list, max_length=4)  # where to dial it (multiaddrs without /p2p/)

    @field_validator("p2p_addrs")
    @classmethod
    def _short_addrs(cls, v: list[str]) -> list[str]:
        if any(len(a) > 128 for a in v):
            raise ValueError("multiaddr longer than 128 characters")
        return v


class RunAnnouncement(_Strict):
    run_id: str = Field(max_length=128)
    model: str = Field(max_length=256)
    task: str = Field(max_length=256)
    round: int = Field(ge=-1)
    protocol_version: int


def parse_subkeys(value: Any, parse, reasons: Counter, *, max_bytes: int = MAX_VALUE_BYTES) -> dict[str, Any]:
    """Parse a DHT dictionary value {subkey: ValueWithExpiration} into {peer_id: parsed}.

    Anything malformed is skipped and counted in ``reasons`` under a short reason name.
    """
    out: dict[str, Any] = {}
    if value is None:
        return out
    items = getattr(value, "value", value)
    if not isinstance(items, dict):
        reasons["not_a_dictionary"] += 1
        return out
    for subkey, entry in items.items():
        owner = subkey_owner(subkey)
        if owner is None:
            reasons["foreign_subkey"] += 1
            continue
        payload = getattr(entry, "value", entry)
        try:
            wire.check_object(payload)  # plain types, bounded depth (iterative): safe to size and parse
        except wire.WireError as e:
            reasons[e.reason] += 1
            continue
        if isinstance(payload, (bytes, str, list, dict)) and _approx_size(payload) > max_bytes:
            reasons["oversized"] += 1
            continue
        try:
            out[owner.hex()] = parse(payload)
        except (ValidationError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            reasons["malformed"] += 1
    return out


def _approx_size(obj: Any) -> int:
    if isinstance(obj, (bytes, str)):
        return len(obj)
    if isinstance(obj, (list, tuple)):
        return sum(_approx_size(x) for x in obj) + 1
    if isinstance(obj, dict):
        return sum(_approx_size(k) + _approx_size(v) for k, v in obj.items()) + 1
    return 9
