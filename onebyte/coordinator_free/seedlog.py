"""The seed log: every round's decided set, kept by every peer so history outlives the DHT.

hivemind's DHT neither persists nor republishes values, so the contribution records of a round
are gone once their expiration passes or the nodes holding them leave. Each peer therefore keeps
the log of what it applied (a few dozen bytes per contribution), on disk next to its checkpoints,
and serves it to peers that catch up (onebyte.p2p.transfer). A log entry is enough to replay a
round: the seeds follow from (run, peer, round, index) and the coefficients from the codes.

One entry per line (JSON, docs/PROTOCOL.md §14):
    {"round": r, "digest": <set digest>, "records": [[<peer id hex>, <codes hex>], ...]}
with records in canonical order. A later line for the same round replaces an earlier one (a
repaired peer rewrites the rounds it had wrong); a torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from onebyte.coordinator_free.agreement import V1_RULE, RobustRule, RoundSet, decide_round
from onebyte.dht.records import ContributionRecord
from onebyte.zo.codec import ByteCodec, Float32Codec

log = logging.getLogger("onebyte.seedlog")
_HEX64 = re.compile(r"[0-9a-f]{64}")


MAX_LINE_BYTES = 1024 * 1024  # one entry (a round of ~10,000 records); onebyte.p2p.transfer reads no longer line


class SeedLogError(ValueError):
    pass


def entry_line(round_: int, digest: str, records: Iterable[tuple[str, bytes]]) -> bytes:
    return (
        json.dumps(
            {"round": round_, "digest": digest, "records": [[p, c.hex()] for p, c in records]}, separators=(",", ":")
        )
        + "\n"
    ).encode()


def parse_line(line: bytes) -> tuple[int, str, list[tuple[str, bytes]]]:
    """(round, digest, [(peer, codes)]); raises SeedLogError on anything malformed (lines come from
    other peers: deep nesting, huge numbers and wrong shapes are errors, never crashes)."""
    if len(line) > MAX_LINE_BYTES:
        raise SeedLogError(f"seed-log entry of {len(line)} bytes")
    try:
        obj = json.loads(line)
        round_, digest = int(obj["round"]), str(obj["digest"])
        records = [(str(p), bytes.fromhex(c)) for p, c in obj["records"]]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        raise SeedLogError(f"malformed seed-log entry: {type(e).__name__}") from None
    # exactly as entry_line writes them (docs/PROTOCOL.md §14): an integer round, lowercase hex
    # strings; a peer id in capitals would derive other seeds from the same digest
    if (
        type(obj["round"]) is not int
        or round_ < 0
        or not isinstance(obj["digest"], str)
        or not _HEX64.fullmatch(digest)
        or not isinstance(obj["records"], list)
        or any(
            not (
                isinstance(e, list)
                and isinstance(e[0], str)
                and _HEX64.fullmatch(e[0])
                and isinstance(e[1], str)
                and c.hex() == e[1]
            )
            for (_, c), e in zip(records, obj["records"])
        )
    ):
        raise SeedLogError("malformed seed-log entry: bad round, digest, peer id or codes (integer, lowercase hex)")
    return round_, digest, records


def replay_set(
    run_id: str, line: bytes, *, contribs_per_round: int, codec: ByteCodec | Float32Codec, rule: RobustRule = V1_RULE
) -> RoundSet:
    """Rebuild a round's set from its log entry through the same rule as live rounds; the digest
    must come out as logged, so a corrupted or altered entry is refused, never applied."""
    round_, digest, records = parse_line(line)
    recs = {p: ContributionRecord(round=round_, published_at=0.0, codes=c) for p, c in records}
    rs = decide_round(
        run_id, round_, recs, close_time=math.inf, contribs_per_round=contribs_per_round, codec=codec, rule=rule
    )
    if rs.rejected or rs.digest != digest or len(recs) != len(records):
        raise SeedLogError(f"seed-log entry for round {round_} does not reproduce its digest")
    return rs


class SeedLog:
    """Entries by round, in memory and (optionally) appended to ``path``."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._lines: dict[int, bytes] = {}
        self._counts: dict[int, int] = {}  # contributions per round, kept so that serving .info parses nothing
        self._lock = threading.Lock()
        if self.path and self.path.exists():
            self._load()

    def _load(self) -> None:
        bad = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    round_, _, records = parse_line(line)
                except SeedLogError:
                    bad += 1
                    continue
                self._lines[round_] = line if line.endswith(b"\n") else line + b"\n"
                self._counts[round_] = sum(len(c) for _, c in records)
        if bad:
            log.warning("seed log %s: skipped %d malformed line(s) (a torn write?)", self.path, bad)

    def put(self, round_: int, digest: str, records: Iterable[tuple[str, bytes]]) -> None:
        self.put_line(entry_line(round_, digest, records))

    def put_line(self, line: bytes) -> None:
        round_, _, records = parse_line(line)
        with self._lock:
            if self._lines.get(round_) == line:
                return
            self._lines[round_] = line
            self._counts[round_] = sum(len(c) for _, c in records)
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as f:
                    f.write(line)

    def get(self, round_: int) -> bytes | None:
        return self._lines.get(round_)

    def span(self) -> tuple[int, int] | None:
        """(first, last) such that every round in between is present, ending at the newest."""
        with self._lock:
            if not self._lines:
                return None
            last = max(self._lines)
            first = last
            while first - 1 in self._lines:
                first -= 1
            return first, last

    def lines(self, first: int, last: int) -> list[bytes]:
        with self._lock:
            return [self._lines[r] for r in range(first, last + 1) if r in self._lines]

    def contributions(self, first: int, last: int) -> int:
        """Contributions logged in [first, last] (a replay-cost estimate)."""
        with self._lock:
            return sum(self._counts.get(r, 0) for r in range(first, last + 1))
