"""The one shared harness of bench/ (not part of the onebyte package).

Scripts run as ``python bench/<name>.py``, so bench/ is on sys.path and ``import harness`` finds
this package; importing it also puts the repository root on sys.path, so ``import onebyte`` finds
the checkout being measured. What most scripts need is re-exported here; ``harness.netns`` (root
and iproute2 only) is imported by the scripts that make network namespaces.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.machine import cpu_name, git_head, machine_info, uptime  # noqa: E402
from harness.report import log, md_table, results_path, table, write_results  # noqa: E402
from harness.stats import median, percentile, timed  # noqa: E402

__all__ = [
    "ROOT",
    "RESULTS",
    "cpu_name",
    "git_head",
    "log",
    "machine_info",
    "md_table",
    "median",
    "percentile",
    "results_path",
    "table",
    "timed",
    "uptime",
    "write_results",
]
