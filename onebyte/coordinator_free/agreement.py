"""Which contributions form a round, in what order, and whether replicas agree.

The rule every peer applies to the records it read for round r (docs/PROTOCOL.md §12):
a record counts if it parsed and verified, comes from an allowed key (private runs), names
round r, was published (by its own signed clock) no later than close(r), and carries at most
``contribs_per_round`` finite codes of the run's codec; its codes are contributions index 0..k-1.
The set is ordered by (peer id, index).
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
from onebyte.zo.codec import ByteCodec, Float32Codec, decode_codes, g_max


@dataclass
class RoundSet:
    round: int
    contributions: list[tuple[int, float]]  # (seed, decoded g) in canonical order
    counts: dict[str, int]  # contributions per contributing peer
    digest: str  # SHA-256 of the canonical list of (peer, codes)
    rejected: Counter = field(default_factory=Counter)
    records: list[tuple[str, bytes]] = field(
        default_factory=list
    )  # accepted (peer, codes), canonical order: the seed-log entry


@dataclass(frozen=True)
class RobustRule:
    """The robust round rule of a public run (docs/PROTOCOL.md §15), from the manifest; all None = v1.

    max_contributions  at most this many contributions per round: if the eligible records carry
                       more, records are taken in order of SHA-256("onebyte/cap/v1" || u64le(r) ||
                       public key) while the running count stays within the cap (bounded work)
    clip_abs           every decoded |g| is clipped to this value (sign kept)
    clip_median        every decoded |g| is clipped to this multiple of the round's median |g|
                       (the ceil(n/2)-th smallest of the kept |g|)
    seniority_window   with max_new_contributions: the cap keeps keys by seniority (rounds of the last
                       W in which the key's record was kept, at most half clipped, onebyte.coordinator_free.
                       seniority), and keys without any take at most max_new_contributions per round
    """

    max_contributions: int | None = None
    clip_abs: float | None = None
    clip_median: float | None = None
    seniority_window: int | None = None
    max_new_contributions: int | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_contributions, self.clip_abs, self.clip_median))

    @property
    def by_seniority(self) -> bool:
        return self.seniority_window is not None


V1_RULE = RobustRule()


def cap_rank(round_: int, peer_id: str) -> bytes:
    return hashlib.sha256(b"onebyte/cap/v1" + struct.pack("<Q", round_) + bytes.fromhex(peer_id)).digest()


def held_back(value: float, limit: float | None, largest: float) -> bool:
    """A code the rule does not take at face value: clipped (|v| > limit), or saturated (|v| = the codec's
    largest) where nothing clips."""
    return abs(value) > limit if limit is not None else abs(value) >= largest


def admit_by_seniority(
    round_: int, eligible: Mapping[str, list[float]], rule: RobustRule, seniority: Mapping[str, int], largest: float
) -> set[str]:
    """Which eligible keys a round of a run with seniority keeps (docs/PROTOCOL.md §15, step 1b).
    Keys without seniority come first, at most ``max_new_contributions`` codes of them: those with at
    most half their codes held back by ``clip_abs`` (or saturated) before the others, then by cap rank;
    then keys with seniority, the most senior first, while the round holds ``max_contributions``."""
    new_limit, cap = rule.max_new_contributions, rule.max_contributions
    limit = float(rule.clip_abs) if rule.clip_abs is not None else None

    def saturated(p: str) -> bool:
        return 2 * sum(held_back(v, limit, largest) for v in eligible[p]) > len(eligible[p])

    new = sorted((p for p in eligible if not seniority.get(p)), key=lambda p: (saturated(p), cap_rank(round_, p)))
    old = sorted((p for p in eligible if seniority.get(p)), key=lambda p: (-seniority[p], cap_rank(round_, p)))
    kept, total, fresh = set(), 0, 0
    for p in new:
        n = len(eligible[p])
        if fresh + n <= new_limit and total + n <= cap:
            kept.add(p)
            fresh, total = fresh + n, total + n
    for p in old:
        n = len(eligible[p])
        if total + n <= cap:
            kept.add(p)
            total += n
    return kept


def clip_limit(values: list[float], rule: RobustRule) -> float | None:
    """The clip applied to every |g| of a round (None: no clip). Plain binary64 arithmetic on
    decoded values, which are binary32 numbers, so every replica gets the same limit."""
    limits = []
    if rule.clip_abs is not None:
        limits.append(float(rule.clip_abs))
    if rule.clip_median is not None and values:
        mags = sorted(abs(v) for v in values)
        limits.append(float(rule.clip_median) * mags[(len(mags) + 1) // 2 - 1])
    return min(limits) if limits else None


def decide_round(
    run_id: str,
    round_: int,
    records: Mapping[str, ContributionRecord],
    *,
    close_time: float,
    contribs_per_round: int,
    codec: ByteCodec | Float32Codec,
    allowed: Collection[str] | None = None,
    rule: RobustRule = V1_RULE,
    seniority: Mapping[str, int] | None = None,
) -> RoundSet:
    """``seniority``: each key's seniority at this round, for a run that admits by it (§15); None when
    replaying a logged set, which the rule already admitted (its records are all kept)."""
    rejected: Counter = Counter()
    width = 4 if isinstance(codec, Float32Codec) else 1
    contributions: list[tuple[int, float]] = []
    counts: dict[str, int] = {}
    accepted: list[tuple[str, bytes]] = []
    h = hashlib.sha256(b"onebyte/set/v1" + struct.pack("<Q", round_))
    eligible: dict[str, tuple[bytes, list[float]]] = {}
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
        eligible[peer_id] = (rec.codes, values)
    if rule.by_seniority and seniority is not None:
        eligible_values = {p: v for p, (_, v) in eligible.items()}
        kept = admit_by_seniority(round_, eligible_values, rule, seniority, g_max(codec))
        for p in eligible.keys() - kept:
            rejected["new_key_limit" if not seniority.get(p) else "over_round_cap"] += 1
        eligible = {p: v for p, v in eligible.items() if p in kept}
    elif rule.max_contributions is not None and sum(len(v) for _, v in eligible.values()) > rule.max_contributions:
        kept, total = set(), 0
        for peer_id in sorted(eligible, key=lambda p: cap_rank(round_, p)):
            n = len(eligible[peer_id][1])
            if total + n <= rule.max_contributions:
                kept.add(peer_id)
                total += n
        rejected["over_round_cap"] += len(eligible) - len(kept)
        eligible = {p: v for p, v in eligible.items() if p in kept}
    limit = clip_limit([v for _, vs in eligible.values() for v in vs], rule)
    for peer_id, (codes, values) in eligible.items():  # still in canonical order
        counts[peer_id] = len(values)
        accepted.append((peer_id, codes))
        h.update(bytes.fromhex(peer_id) + struct.pack("<I", len(codes)) + codes)
        for i, v in enumerate(values):
            if limit is not None and abs(v) > limit:
                v = math.copysign(limit, v)
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
