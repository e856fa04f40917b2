"""Which contributions form a round, in what order, and whether replicas agree.

The rule every peer applies to the records it read for round r (docs/PROTOCOL.md §12):
a record counts if it parsed and verified, comes from an allowed key (private runs), names
round r, was published (by its own signed clock) no later than close(r), and carries at most
``contribs_per_round`` finite codes of the run's codec; its codes are contributions index 0..k-1. The set is ordered by (peer id, index).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from onebyte.dht.records import ContributionRecord
from onebyte.zo import contribution_seed
from onebyte.zo.codec import ByteCodec, Float32Codec


@dataclass
class RoundSet:
    round: int
    contributions: list[tuple[int, float]]  # (seed, decoded g) in canonical order
    counts: dict[str, int]  # contributions per contributing peer
    digest: str  # SHA-256 of the canonical list of (peer, codes)
    rejected: Counter = field(default_factory=Counter)
    records: list[tuple[str, bytes]] = field(default_factory=list)  # accepted (peer, codes), canonical order: the seed-log entry


def decode_codes(codes: bytes, codec: ByteCodec | Float32Codec) -> list[float]:
    if isinstance(codec, Float32Codec):
        if len(codes) % 4:
            raise ValueError("float32 codes must be a multiple of 4 bytes")
        values = [codec.decode(v) for v in struct.unpack(f"<{len(codes) // 4}f", codes)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("non-finite float32 code")
        return values
    return [codec.decode(b) for b in codes]


def encode_codes(values: list, codec: ByteCodec | Float32Codec) -> bytes:
    if isinstance(codec, Float32Codec):
        return struct.pack(f"<{len(values)}f", *values)
    return bytes(values)


def decide_round(
    run_id: str,
    round_: int,
    records: Mapping[str, ContributionRecord],
    *,
    close_time: float,
    contribs_per_round: int,
    codec: ByteCodec | Float32Codec,
    allowed: Collection[str] | None = None,
) -> RoundSet:
    rejected: Counter = Counter()
    width = 4 if isinstance(codec, Float32Codec) else 1
    contributions: list[tuple[int, float]] = []
    counts: dict[str, int] = {}
    accepted: list[tuple[str, bytes]] = []
    h = hashlib.sha256(b"onebyte/set/v1" + struct.pack("<Q", round_))
    for peer_id in sorted(records, key=lambda p: p.encode("utf-8")):
        rec = records[peer_id]
        if allowed is not None and peer_id not in allowed:
            rejected["not_allowed"] += 1
            continue
        if rec.round != round_:
            rejected["wrong_round"] += 1
            continue
        if rec.published_at > close_time:
            rejected["late"] += 1
            continue
        if len(rec.codes) == 0 or len(rec.codes) % width or len(rec.codes) // width > contribs_per_round:
            rejected["too_many_codes" if len(rec.codes) // width > contribs_per_round else "malformed"] += 1
            continue
        try:
            values = decode_codes(rec.codes, codec)
        except ValueError:
            rejected["malformed"] += 1
            continue
        counts[peer_id] = len(values)
        accepted.append((peer_id, rec.codes))
        h.update(bytes.fromhex(peer_id) + struct.pack("<I", len(rec.codes)) + rec.codes)
        for i, v in enumerate(values):
            contributions.append((contribution_seed(run_id, peer_id, round_, i), v))
    return RoundSet(round_, contributions, counts, h.hexdigest(), rejected, accepted)


@dataclass
class AgreementReport:
    round: int
    agree: int
    disagree: int
    majority_sha256: str | None
    mine_in_majority: bool


TIE_BREAK_MIN_VOTERS = 3  # a 1-1 tie is no evidence (one vote may just be late): no decision


def agreed_hash(hashes: Collection[str]) -> str | None:
    """The hash most reporters hold; a tie among at least 3 voters goes to the smallest hash, so
    that every peer (and both halves of a healed partition) settles on the same one. None if
    nothing was reported or two voters disagree."""
    counts = Counter(hashes)
    if not counts:
        return None
    top = max(counts.values())
    tied = [h for h, n in counts.items() if n == top]
    if len(tied) > 1 and sum(counts.values()) < TIE_BREAK_MIN_VOTERS:
        return None
    return min(tied)


def compare_hashes(round_: int, mine: str, reported: Mapping[str, str]) -> AgreementReport:
    """Compare my hash for ``round_`` with what other peers reported for it."""
    majority = agreed_hash([*reported.values(), mine])
    agree = sum(1 for v in reported.values() if v == mine)
    return AgreementReport(round_, agree, len(reported) - agree, majority, majority == mine)
