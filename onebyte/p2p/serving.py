"""What serving catch-up to others may cost a peer (docs/PROTOCOL.md §14, "Serving budget"): how many .log and
.state answers it gives at once and per requester, and the busy answer that refuses the rest at once, so that a
joiner asks another source or comes back later. Used by onebyte/p2p/transfer.py."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from onebyte.dht.wire import clip

# at most SERVE_STREAMS .log and .state answers in flight at once (each holds one tensor, or 256 KB of log, in
# memory), at most SERVE_PER_REQUESTER of them per requester, at most SERVE_PER_MINUTE started per requester a minute
SERVE_STREAMS = 4
SERVE_PER_REQUESTER = 1
SERVE_PER_MINUTE = 12
SERVE_RETRY_SECONDS = 10
SERVE_REMEMBERED = 4096  # requesters whose rate is tracked (the oldest are forgotten)


class BusyAnswer(BaseModel):
    """A server's refusal of a .log or .state request over its serving budget (§14): the only message it sends."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    busy: str = Field(max_length=200)
    retry_after: float = Field(ge=0, le=3600)


def busy_refusal(first_metadata: bytes, p2p_id: str) -> str | None:
    """Why the source refused, when a stream's first message is a busy answer; else None."""
    if not first_metadata.startswith(b'{"busy"'):
        return None
    try:
        b = BusyAnswer.model_validate_json(first_metadata[:512])
    except ValidationError:
        return f"peer {p2p_id[:12]} sent a malformed busy answer"
    return f"peer {p2p_id[:12]} is busy ({clip(b.busy, 80)}): retry in {b.retry_after:g}s or elsewhere"


class ServeBudget:
    """Admission of .log and .state answers (SERVE_* above). Used from the transfer thread's event loop only."""

    def __init__(
        self, streams: int = SERVE_STREAMS, per_requester: int = SERVE_PER_REQUESTER, per_minute: int = SERVE_PER_MINUTE
    ):
        self.streams, self.per_requester, self.per_minute = streams, per_requester, per_minute
        self.active: dict[str, int] = {}  # requester -> its answers in flight
        self.tokens: dict[str, tuple[float, float]] = {}  # requester -> (tokens, when counted): a token bucket

    def admit(self, requester: str) -> str | None:
        """None (admitted: call ``release`` when done) or why not."""
        if sum(self.active.values()) >= self.streams:
            return f"serving {self.streams} transfers"
        if self.active.get(requester, 0) >= self.per_requester:
            return f"already serving you {self.per_requester}"
        now = time.monotonic()
        tokens, then = self.tokens.pop(requester, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - then) * self.per_minute / 60.0)
        if tokens < 1.0:
            self.tokens[requester] = (tokens, now)
            return f"more than {self.per_minute} requests a minute from you"
        self.tokens[requester] = (tokens - 1.0, now)  # re-inserted last: the dict's order is last use
        while len(self.tokens) > SERVE_REMEMBERED:
            del self.tokens[next(iter(self.tokens))]
        self.active[requester] = self.active.get(requester, 0) + 1
        return None

    def release(self, requester: str) -> None:
        n = self.active.get(requester, 0) - 1
        if n > 0:
            self.active[requester] = n
        else:
            self.active.pop(requester, None)
