"""What a benchmark says: one log line format, console and markdown tables, the results JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from harness import RESULTS


def log(msg: str) -> None:
    """A progress line, flushed at once: ``[<script> HH:MM:SS] msg`` (script = its file name without .py)."""
    name = Path(sys.argv[0]).stem or "bench"
    print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def table(rows: list[tuple], headers: tuple, *, right: bool = False) -> str:
    """A console table: columns padded to their widest cell (left-aligned, or right with ``right``),
    a dash rule under the header; floats shortened by _fmt, other cells as str()."""
    cells = [tuple(str(c) for c in headers)] + [tuple(_fmt(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    pad = str.rjust if right else str.ljust
    lines = ["  ".join(pad(c, w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows: list[list], headers: list[str]) -> str:
    """A markdown table (for the .md reports); a '|' inside a cell is escaped."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c != c:
            return "nan"
        if abs(c) >= 100:
            return f"{c:.0f}"
        if abs(c) >= 1:
            return f"{c:.3f}"
        return f"{c:.4g}"
    return str(c)


def results_path(name: str, out: str | None = None) -> Path:
    """Where a benchmark's JSON goes: ``--out`` if given, else bench/results/<name>.json."""
    return Path(out) if out else RESULTS / f"{name}.json"


def write_results(name: str, obj: dict, out: str | None = None) -> Path:
    """Write the results JSON atomically (a temporary file renamed over it): an interrupted run never
    leaves half a file where the last good one was."""
    path = results_path(name, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
