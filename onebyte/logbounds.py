"""Bounded logging: other peers must not be able to fill this peer's disk through its log.

Installed on every handler of the root logger and of hivemind's own logger (hivemind's DHT runs
in a forked child process, which inherits both), a filter that
- cuts every line (message and traceback) to ``MAX_LINE_CHARS``;
- lets at most ``BURST`` lines of one kind (logger, level, message template with the numbers
  taken out) through per ``WINDOW_SECONDS`` (120 a minute), and adds to the next line of that kind that passes
  how many were suppressed ("[+N similar lines suppressed]").
An attacker's records or answers that make some code log per object (hivemind warns once per
unknown msgpack extension object; a failing p2p handler logs its traceback) cost this peer at most
BURST lines of MAX_LINE_CHARS per kind per window. Honest logging (a line per round) is far below.
"""

from __future__ import annotations

import logging
import re
import threading
import time

MAX_LINE_CHARS = 2000
BURST = 120  # a line per round at 0.5 s rounds still passes
WINDOW_SECONDS = 60.0
MAX_KINDS = 512  # kinds tracked at once; beyond this the oldest windows are forgotten

_NUMBERS = re.compile(r"\d+")


class BoundedLogFilter(logging.Filter):
    def __init__(self, burst: int = BURST, window: float = WINDOW_SECONDS, max_chars: int = MAX_LINE_CHARS):
        super().__init__()
        self.burst, self.window, self.max_chars = burst, window, max_chars
        self._lock = threading.Lock()
        self._kinds: dict[tuple, list] = {}  # kind -> [window start, passed, suppressed]
        self.suppressed_total = 0

    def _kind(self, record: logging.LogRecord) -> tuple:
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        return record.name, record.levelno, _NUMBERS.sub("#", template[:200])

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_onebyte_bounded", False):  # one record, several handlers: decide once
            return record._onebyte_pass
        now = time.monotonic()
        kind = self._kind(record)
        with self._lock:
            state = self._kinds.get(kind)
            if state is None or now - state[0] >= self.window:
                suppressed = state[2] if state else 0
                if len(self._kinds) >= MAX_KINDS and state is None:
                    oldest = min(self._kinds, key=lambda k: self._kinds[k][0])
                    del self._kinds[oldest]
                state = self._kinds[kind] = [now, 0, 0]
            else:
                suppressed = 0
            if state[1] >= self.burst:
                state[2] += 1
                self.suppressed_total += 1
                record._onebyte_bounded, record._onebyte_pass = True, False
                return False
            state[1] += 1
        self._bound(record, suppressed)
        record._onebyte_bounded, record._onebyte_pass = True, True
        return True

    def _bound(self, record: logging.LogRecord, suppressed: int) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            text = f"{record.msg!r} % {record.args!r}"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None  # the formatter uses exc_text, cut below
        if record.exc_text and len(record.exc_text) > self.max_chars:
            record.exc_text = (
                record.exc_text[: self.max_chars // 2]
                + f"\n...[{len(record.exc_text) - self.max_chars} characters cut]...\n"
                + record.exc_text[-self.max_chars // 2 :]
            )
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"...[{len(text) - self.max_chars} characters cut]"
        if suppressed:
            text += f" [+{suppressed} similar lines suppressed in the last {self.window:.0f}s]"
        record.msg, record.args = text, None


_installed: BoundedLogFilter | None = None


def install(filter_: BoundedLogFilter | None = None) -> BoundedLogFilter:
    """Add one shared filter to the handlers of the root logger and of hivemind's logger."""
    global _installed
    f = filter_ or _installed or BoundedLogFilter()
    _installed = f
    try:
        from hivemind.utils.logging import get_logger

        get_logger("hivemind")  # creates hivemind's default handler if it is not there yet
    except ImportError:
        pass
    for name in (None, "hivemind"):
        for handler in logging.getLogger(name).handlers:
            if f not in handler.filters:
                handler.addFilter(f)
    return f
